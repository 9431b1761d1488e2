"""OOD and adversarial detection as plain-PyTorch pieces: each detector is ``fit(loader)`` then ``score(x) -> (N,)``,
higher meaning more in-distribution.

* :class:`MaxSoftmax`, :class:`Energy`: the baselines, from logits;
* :class:`Mahalanobis`: class Gaussians on pooled features of tapped layers (:class:`ClassGaussians`, streamed);
* :class:`FeatureEnsemble`: logistic regression over the Mahalanobis layer scores;
* :func:`calibrate`: preprocessing magnitude, best layer and ensemble weights chosen on validation data;
* :func:`adaptive_objective`: an attack objective that also fools the ensemble;
* :func:`detection_metrics`: AUROC, TNR at 95% TPR, detection accuracy, AUPR-in/out.
"""

from medrobust.lightning_modules.detection.adaptive import adaptive_objective
from medrobust.lightning_modules.detection.baselines import Energy, MaxSoftmax
from medrobust.lightning_modules.detection.calibration import calibrate
from medrobust.lightning_modules.detection.ensemble import FeatureEnsemble
from medrobust.lightning_modules.detection.gaussians import ClassGaussians
from medrobust.lightning_modules.detection.mahalanobis import Mahalanobis
from medrobust.lightning_modules.detection.metrics import DETECTORS, METRICS, detection_metrics, roc_points
from medrobust.lightning_modules.detection.targets import Target, parse_targets

__all__ = [
    "DETECTORS",
    "METRICS",
    "ClassGaussians",
    "Energy",
    "FeatureEnsemble",
    "Mahalanobis",
    "MaxSoftmax",
    "Target",
    "adaptive_objective",
    "calibrate",
    "detection_metrics",
    "parse_targets",
    "roc_points",
]
