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
* ``summary/shortcut_auroc/<split>``, ``summary/shortcut_bal_acc/<split>``, ``summary/shortcut_dtpr/<split>``: the
  shortcut test splits (``aligned``, ``flipped``, ``absent``; ShortcutEvaluation), ``dtpr`` being the bias gap;
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

SUMMARY = "summary/"
CLEAN = {
    "test/acc": "clean_acc",
    "test/bal_acc": "clean_bal_acc",
    "test/auroc": "clean_auroc",
    "test/top_pred_share": "clean_top_pred_share",
    "test/class_ratio": "test_class_ratio",
}
SHIFT = {"test/shift/mean/bal_acc": "shift_bal_acc", "test/shift/be": "shift_be", "test/shift/rbe": "shift_rbe"}
SHORTCUT = {"auroc": "shortcut_auroc", "bal_acc": "shortcut_bal_acc", "dtpr": "shortcut_dtpr"}
DETECT = {"auroc": "detect_auroc", "tnr_at_tpr95": "detect_tnr_at_tpr95"}
SALIENCY = ("energy", "pointing", "iou", "sensitivity", "rank_corr")
WORST = {"acc": "adv_acc", "bal_acc": "adv_bal_acc", "n": "adv_n", "top_pred_share": "adv_top_pred_share"}


def summary_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The ``summary/*`` metrics of one run, from its ``test/*`` metrics (empty if it was never tested)."""
    out = {SUMMARY + name: float(metrics[key]) for key, name in CLEAN.items() if key in metrics}
    shift_auroc = []
    for key, value in metrics.items():
        parts = key.split("/")
        # test/adv/worst/<threat>/<acc|bal_acc|n|top_pred_share>
        if len(parts) == 5 and parts[:3] == ["test", "adv", "worst"] and parts[4] in WORST:
            out[f"{SUMMARY}{WORST[parts[4]]}/{parts[3]}"] = float(value)
        # test/adv/<attack>/<norm>_dist/median
        if len(parts) == 5 and parts[:2] == ["test", "adv"] and parts[3].endswith("_dist") and parts[4] == "median":
            out[f"{SUMMARY}adv_dist/{parts[3].removesuffix('_dist')}/{parts[2]}"] = float(value)
        # test/shortcut/<split>/<auroc|bal_acc|dtpr>
        if len(parts) == 4 and parts[:2] == ["test", "shortcut"] and parts[3] in SHORTCUT:
            out[f"{SUMMARY}{SHORTCUT[parts[3]]}/{parts[2]}"] = float(value)
        # test/saliency/<method>/<metric> and test/<split...>/saliency/<method>/<metric>
        if len(parts) >= 4 and parts[0] == "test" and parts[-3] == "saliency" and parts[-1] in SALIENCY:
            where = "_".join(parts[1:-3])
            out[f"{SUMMARY}saliency_{parts[-1]}/{parts[-2]}{'/' + where if where else ''}"] = float(value)
        # test/detect/<detector>/<target>/<auroc|tnr_at_tpr95>
        if len(parts) == 5 and parts[:2] == ["test", "detect"] and parts[2] in DETECTORS and parts[4] in DETECT:
            out[f"{SUMMARY}{DETECT[parts[4]]}/{parts[2]}/{parts[3]}"] = float(value)
        # test/shift/<corruption>/mean/auroc
        if len(parts) == 5 and parts[:2] == ["test", "shift"] and parts[3:] == ["mean", "auroc"]:
            shift_auroc.append(float(value))
    out |= {SUMMARY + name: float(metrics[key]) for key, name in SHIFT.items() if key in metrics}
    if shift_auroc:
        out[SUMMARY + "shift_auroc"] = statistics.mean(shift_auroc)
    return dict(sorted(out.items()))
