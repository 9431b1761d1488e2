"""``summary/*``: the same few headline numbers for every tested run, derived from its ``test/*`` metrics.

Every run gets the same names, whichever attacks and shifts it was evaluated with, so MLflow's compare view and the
sweep reports line runs up:

* ``summary/clean_acc``, ``summary/clean_bal_acc``, ``summary/clean_auroc``: the in-distribution test split;
* ``summary/clean_top_pred_share``: the share of test predictions given to the most predicted class (1.0 is a
  constant classifier), and ``summary/test_class_ratio``: the largest class count over the smallest in the test
  labels (1.0 is balanced);
* ``summary/adv_acc/<threat>``, ``summary/adv_bal_acc/<threat>``, ``summary/adv_n/<threat>``,
  ``summary/adv_top_pred_share/<threat>``: the per-sample worst case over clean and every attack evaluated at that
  budget, on the ``n`` samples all of them saw (``test/adv/worst/<threat>/*``, RobustnessEvaluation). Runs without a
  worst case get no adversarial summary: the minimum of whole-attack accuracies measured on different samples is
  not a worst case;
* ``summary/shift_bal_acc``, ``summary/shift_auroc``: the mean over corruptions and severities; ``summary/shift_be``
  and ``summary/shift_rbe``: MedMNIST-C's BE and rBE, where the run has them;
* ``summary/shortcut_auroc/<split>``, ``summary/shortcut_bal_acc/<split>``, ``summary/shortcut_dtpr/<split>``,
  ``summary/shortcut_eo_gap/<split>``: the shortcut test splits (``aligned``, ``flipped``, ``absent``;
  ShortcutEvaluation), ``dtpr`` being the bias gap and ``eo_gap`` the equalised-odds gap, each only where no group
  behind it has fewer than 30 samples;
* ``summary/saliency_<metric>/<method>`` (``energy``, ``pointing``, ``iou``, ``sensitivity``, ``rank_corr``): saliency
  alignment with the in-distribution split's evidence masks (SaliencyEvaluation); on another masked split, such as a
  shortcut's, ``summary/saliency_<metric>/<method>/<split>`` (``shortcut_aligned``);
* ``summary/detect_auroc/<detector>/<target>``, ``summary/detect_tnr_at_tpr95/<detector>/<target>``: detection of
  OOD, corrupted and adversarial inputs (DetectionEvaluation), for ``msp``, ``energy``, ``mahalanobis`` (best layer)
  and ``ensemble``.
"""

from __future__ import annotations

import statistics

from medrobust.lightning_modules.detection.metrics import DETECTORS
from medrobust.lightning_modules.metrics.metric_names import build_name, parse_name

SUMMARY = "summary/"
CLEAN = {
    "test/acc": "clean_acc",
    "test/bal_acc": "clean_bal_acc",
    "test/auroc": "clean_auroc",
    "test/top_pred_share": "clean_top_pred_share",
    "test/class_ratio": "test_class_ratio",
}
SHIFT = {"test/shift/mean/bal_acc": "shift_bal_acc", "test/shift/be": "shift_be", "test/shift/rbe": "shift_rbe"}
SHORTCUT = ("auroc", "bal_acc", "dtpr", "eo_gap")
DETECT = ("auroc", "tnr_at_tpr95")
SALIENCY = ("energy", "pointing", "iou", "sensitivity", "rank_corr")
WORST = ("acc", "bal_acc", "n", "top_pred_share")


def summary_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The ``summary/*`` metrics of one run, from its ``test/*`` metrics (empty if it was never tested)."""
    out = {SUMMARY + name: float(metrics[key]) for key, name in CLEAN.items() if key in metrics}
    shift_auroc = []
    for key, value in metrics.items():
        parsed = parse_name(key)
        if parsed is None:
            continue
        family, f = parsed
        if family == "adv_worst" and f["stat"] in WORST:
            out[build_name("summary_adv", stat=f["stat"], threat=f["threat"])] = float(value)
        elif family == "adv_distance" and f["stat"] == "median":
            out[build_name("summary_adv_distance", norm=f["norm"], attack=f["attack"])] = float(value)
        elif family == "shortcut" and f["stat"] in SHORTCUT:
            small = metrics.get(build_name("shortcut", split=f["split"], stat=f"{f['stat']}_small_group"))
            if small != 1.0:  # a gap on a group under 30 samples stays out of the summary
                out[build_name("summary_shortcut", stat=f["stat"], split=f["split"])] = float(value)
        elif family == "saliency" and f["stat"] in SALIENCY:
            split = "/" + f["where"].strip("/").replace("/", "_") if f["where"] else ""
            out[build_name("summary_saliency", stat=f["stat"], method=f["method"], split=split)] = float(value)
        elif family == "detect" and f["detector"] in DETECTORS and f["stat"] in DETECT:
            out[build_name("summary_detect", stat=f["stat"], detector=f["detector"], target=f["target"])] = float(value)
        elif family == "shift_corruption_mean" and f["stat"] == "auroc":
            shift_auroc.append(float(value))
    out |= {SUMMARY + name: float(metrics[key]) for key, name in SHIFT.items() if key in metrics}
    if shift_auroc:
        out[SUMMARY + "shift_auroc"] = statistics.mean(shift_auroc)
    return dict(sorted(out.items()))
