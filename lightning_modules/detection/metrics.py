"""Detection metrics from in-distribution and outlier scores (higher score: more in-distribution).

Two conventions meet here, so the names say which class is positive:

* ``tnr_at_tpr95``: Lee et al.'s TNR at 95% TPR, **in-distribution positive**: the share of outliers rejected at the
  threshold that keeps 95% of in-distribution samples;
* ``fpr_at_tpr95_ood``: pytorch-ood's ``FPR95TPR``, **OOD positive**: the share of in-distribution samples flagged
  at the threshold that catches 95% of outliers.

Also ``auroc`` (the same for either convention), ``detection_acc`` (``max_t 0.5 * (TPR + TNR)``, Lee et al.),
``aupr_in`` (average precision, in-distribution positive) and ``aupr_out`` (outliers positive, scores negated).
ROC and precision-recall come from scikit-learn; AUPR is its average precision (a step sum over the curve), which
pytorch-ood's trapezoidal AUPR approximates (within 0.01-0.02 on small sets).
"""

from __future__ import annotations

import numpy as np
import torch

from medrobust.utilities.errors import InputError

METRICS = ("auroc", "tnr_at_tpr95", "fpr_at_tpr95_ood", "detection_acc", "aupr_in", "aupr_out")
#: the detectors DetectionEvaluation offers, and the names its headline scores are logged under (``mahalanobis``: the
#: best single layer; per-layer scores come as ``mahalanobis_<layer>`` besides)
DETECTORS = ("msp", "energy", "mahalanobis", "ensemble")


def detection_metrics(score_in: torch.Tensor, score_out: torch.Tensor, tpr: float = 0.95) -> dict[str, float]:
    """The metrics of :data:`METRICS`, plus ``n_in`` and ``n_out``."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in = np.asarray(torch.as_tensor(score_in).double().flatten().cpu())
    s_out = np.asarray(torch.as_tensor(score_out).double().flatten().cpu())
    if len(s_in) == 0 or len(s_out) == 0:
        raise InputError(f"detection needs samples on both sides: {len(s_in)} in-distribution, {len(s_out)} outliers")
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    fpr, tpr_in, _ = roc_curve(is_in, scores, drop_intermediate=False)
    fpr_ood_side, tpr_ood, _ = roc_curve(1 - is_in, -scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(is_in, scores)),
        "tnr_at_tpr95": float(1 - fpr[tpr_in >= tpr].min()),
        "fpr_at_tpr95_ood": float(fpr_ood_side[tpr_ood >= tpr].min()),
        "detection_acc": float((0.5 * (tpr_in + 1 - fpr)).max()),
        "aupr_in": float(average_precision_score(is_in, scores)),
        "aupr_out": float(average_precision_score(1 - is_in, -scores)),
        "n_in": len(s_in),
        "n_out": len(s_out),
    }


def roc_points(score_in: torch.Tensor, score_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, in-distribution positive (for figures)."""
    from sklearn.metrics import roc_curve

    s_in, s_out = np.asarray(score_in, dtype=float), np.asarray(score_out, dtype=float)
    scores = np.concatenate([s_in, s_out])
    fpr, tpr, _ = roc_curve(np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))]), scores)
    return fpr, tpr
