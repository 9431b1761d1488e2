"""An attack that knows the detector: PGD on the classification loss plus the feature ensemble's in-distribution
log-odds, so the adversarial image is misclassified *and* looks in-distribution to the Mahalanobis scores."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lightning_modules.components.detection.ensemble import FeatureEnsemble
from lightning_modules.components.losses import cross_entropy_sum


def adaptive_objective(
    ensemble: FeatureEnsemble, weight: float = 1.0
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(net, x, y) -> CE(net(x), y) + weight * sum(ensemble log-odds of x)``, for :class:`PGD`'s ``objective``.

    Both terms come from one forward pass. The log-odds are the ensemble's linear combination of layer scores without
    input preprocessing: the attacker follows the detector's score, and its preprocessing step at test time is
    applied afterwards (a tiny step; the report says so).
    """
    mahalanobis = ensemble.mahalanobis

    def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, feats = mahalanobis.features(x)
        return cross_entropy_sum(logits, y) + weight * ensemble.combine(mahalanobis.score_features(feats)).sum()

    return objective
