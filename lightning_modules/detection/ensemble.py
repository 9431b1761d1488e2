"""Lee et al.'s feature ensemble: a logistic regression over the per-layer Mahalanobis scores."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from medrobust.lightning_modules.detection.mahalanobis import Mahalanobis
from medrobust.utilities.errors import InputError


class FeatureEnsemble:
    """Weights over a :class:`Mahalanobis` detector's layer scores, fitted to separate in-distribution samples
    (label 1) from outliers (label 0): OOD samples, or adversarial ones such as FGSM's when the targets must stay
    unseen (Lee et al.'s honest setting).

    scikit-learn's ``LogisticRegression`` on standardised scores, classes weighted to balance; the fitted weights are
    folded back into score units, so :meth:`combine` is a differentiable ``scores @ w + b`` (the log-odds of being
    in-distribution) that an adaptive attack can follow.
    """

    name = "ensemble"

    def __init__(self, mahalanobis: Mahalanobis, regularisation: float = 1.0) -> None:
        self.mahalanobis = mahalanobis
        self.regularisation = regularisation
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def fit_scores(self, scores: torch.Tensor, is_in: torch.Tensor) -> FeatureEnsemble:
        """Fit on ``(N, L)`` layer scores and ``(N,)`` labels (1: in-distribution, 0: outlier)."""
        from sklearn.linear_model import LogisticRegression

        s, labels = scores.double().cpu().numpy(), is_in.long().cpu().numpy()
        if len(np.unique(labels)) != 2:
            raise InputError("the feature ensemble needs both in-distribution and outlier samples to fit")
        mean, scale = s.mean(axis=0), s.std(axis=0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=self.regularisation, class_weight="balanced", max_iter=1000)
        model.fit((s - mean) / scale, labels)
        w = model.coef_[0] / scale
        self.weight = torch.as_tensor(w, dtype=torch.float32)
        self.bias = torch.as_tensor(model.intercept_[0] - float(w @ mean), dtype=torch.float32)
        return self

    def fit(self, loader: Iterable) -> FeatureEnsemble:
        """Fit on ``(x, is_in)`` batches, scored by the Mahalanobis detector (with its preprocessing)."""
        scores, labels = [], []
        device = next(self.mahalanobis.net.parameters()).device
        for x, is_in in loader:
            scores.append(self.mahalanobis.layer_scores(x.to(device)).cpu())
            labels.append(is_in.cpu())
        return self.fit_scores(torch.cat(scores), torch.cat(labels))

    def combine(self, layer_scores: torch.Tensor) -> torch.Tensor:
        """``(N,)`` log-odds of being in-distribution from ``(N, L)`` layer scores."""
        if self.weight is None:
            raise InputError("FeatureEnsemble.fit must run before scoring")
        weight, bias = self.weight.to(layer_scores.device), self.bias.to(layer_scores.device)
        return layer_scores.float() @ weight + bias

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.mahalanobis.layer_scores(x))
