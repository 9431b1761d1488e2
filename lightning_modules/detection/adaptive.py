"""An attack that knows the detector: PGD on the classification loss plus, once a sample is misclassified, the feature
ensemble's in-distribution log-odds, so the adversarial image is misclassified *and* looks in-distribution to the
Mahalanobis scores."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medrobust.lightning_modules.detection.ensemble import FeatureEnsemble
from medrobust.lightning_modules.losses import cross_entropy_sum


def adaptive_objective(
    ensemble: FeatureEnsemble, weight: float = 1.0
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(net, x, y) -> sum_i CE_i + weight * [x_i misclassified] * ensemble log-odds_i``, for :class:`PGD`'s
    ``objective``.

    Each sample is first driven across the decision boundary by cross-entropy alone; once it is misclassified, the
    detector term joins, pulling it towards what the ensemble calls in-distribution while cross-entropy keeps it on
    the wrong side. (Adding the detector term from the start lets it win before the sample is ever misclassified: at
    weight 1 that fooled the classifier on 25 of ~590 PneumoniaMNIST images.) Both terms come from one forward pass.
    The log-odds are the ensemble's linear combination of layer scores without input preprocessing: the attacker
    follows the detector's score, and its preprocessing step at test time is applied afterwards.
    """
    mahalanobis = ensemble.mahalanobis

    def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, feats = mahalanobis.features(x)
        fooled = (logits.argmax(dim=1) != y).float().detach()
        log_odds = ensemble.combine(mahalanobis.score_features(feats))
        return cross_entropy_sum(logits, y) + weight * (fooled * log_odds).sum()

    return objective
