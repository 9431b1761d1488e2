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

    scikit-learn's logistic regression on standardised scores, classes weighted to balance. Its regularisation is
    chosen by cross-validation as Lee et al. do (``LogisticRegressionCV``: 10 values of C, 5 folds by AUROC; folds by
    ``groups`` where given, so an image and its adversarial copy never sit on both sides), or fixed by
    ``regularisation``. The chosen C is :attr:`chosen_c`. The fitted weights are folded back into score units, so
    :meth:`combine` is a differentiable ``scores @ w + b`` (the log-odds of being in-distribution) that an adaptive
    attack can follow.
    """

    name = "ensemble"

    def __init__(self, mahalanobis: Mahalanobis, regularisation: float | None = None) -> None:
        if regularisation is not None and regularisation <= 0:
            raise InputError(
                f"regularisation: the inverse strength C > 0, or None to cross-validate; got {regularisation}"
            )
        self.mahalanobis = mahalanobis
        self.regularisation = regularisation
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        #: the regularisation C of the last fit (cross-validated unless fixed)
        self.chosen_c: float | None = None

    def fit_scores(
        self, scores: torch.Tensor, is_in: torch.Tensor, groups: torch.Tensor | None = None
    ) -> FeatureEnsemble:
        """Fit on ``(N, L)`` layer scores and ``(N,)`` labels (1: in-distribution, 0: outlier); ``groups`` (``(N,)``
        image ids) keep each image's samples in one cross-validation fold."""
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import StratifiedGroupKFold

        s, labels = scores.double().cpu().numpy(), is_in.long().cpu().numpy()
        if len(np.unique(labels)) != 2:
            raise InputError("the feature ensemble needs both in-distribution and outlier samples to fit")
        mean, scale = s.mean(axis=0), s.std(axis=0)
        scale[scale == 0] = 1.0
        folds = min(5, int(np.bincount(labels).min()))
        if self.regularisation is not None or folds < 2:
            model = LogisticRegression(C=self.regularisation or 1.0, class_weight="balanced", max_iter=1000)
            model.fit((s - mean) / scale, labels)
            self.chosen_c = float(model.C)
        else:
            ids = np.arange(len(labels)) if groups is None else groups.cpu().numpy()
            cv = list(StratifiedGroupKFold(folds, shuffle=True, random_state=0).split(s, labels, ids))
            model = LogisticRegressionCV(
                Cs=10, cv=cv, scoring="roc_auc", class_weight="balanced", max_iter=1000, random_state=0
            )
            model.fit((s - mean) / scale, labels)
            self.chosen_c = float(model.C_[0])
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
