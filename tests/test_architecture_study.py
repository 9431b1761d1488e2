"""The architecture study's flags: same clean AUROC within a point, robustness apart by more than the seed spread."""

from __future__ import annotations

import math

from medrobust.experiments.studies.architectures import decoded, flagged_pairs, spread_cell


def network(auroc: list[float], deepfool: list[float]) -> dict:
    return {"n_seeds": len(auroc), "cells": {"auroc": spread_cell(auroc), "deepfool_l2": spread_cell(deepfool)}}


def test_flags_need_close_auroc_and_a_paired_interval_that_excludes_zero() -> None:
    rows = {
        "a": network([0.930, 0.932], [0.30, 0.32]),
        "b": network([0.935, 0.931], [0.15, 0.18]),  # AUROC within a point, paired gaps 0.15, 0.14: flagged
        "c": network([0.936, 0.934], [0.20, 0.40]),  # gap to a 0.01 < its spread 0.2; to b 0.14 < 0.2
        "d": network([0.990, 0.991], [2.0, 2.1]),  # AUROC far from the rest
        "e": network([0.931], [5.0]),  # one seed: no spread, never flagged
    }
    flags = flagged_pairs(rows)
    assert [(f["a"], f["b"], f["measure"]) for f in flags] == [("a", "b", "deepfool_l2")]
    assert math.isclose(flags[0]["gap"], 0.145)
    assert math.isclose(flags[0]["seed_spread"], 0.03)
    mean, lo, hi, n = flags[0]["paired"]  # the paired interval excludes 0, at n = 2
    assert lo <= mean <= hi
    assert n == 2 and lo > 0 and math.isclose(mean, 0.145)


def test_inf_distances_are_read_and_never_flagged() -> None:
    assert decoded(1.7976931348623157e308) == math.inf and decoded(0.5) == 0.5
    cell = spread_cell([math.inf, 0.1])
    assert cell["mean"] == math.inf and math.isnan(cell["range"])
    rows = {"a": network([0.93, 0.93], [math.inf, 0.1]), "b": network([0.93, 0.93], [0.2, 0.2])}
    assert flagged_pairs(rows) == []


def test_balanced_accuracy_is_the_headline_of_the_study_tables() -> None:
    """Issue 25.8: on imbalanced PneumoniaMNIST a majority-class network keeps its plain accuracy under attack, so the
    study tables and the trade-off report compare balanced accuracy, clean and under attack."""
    from medrobust.experiments.studies.architectures import COLUMNS
    from medrobust.experiments.studies.nonrobust_features import METRICS
    from medrobust.experiments.studies.saliency_alignment import CONTEXT

    robust = {k: v for k, v in COLUMNS.items() if k.startswith(("fgsm_", "pgd_", "worst_"))}
    assert robust and all(v.endswith("/bal_acc") or "adv_bal_acc" in v for v in robust.values())
    assert [m for m in METRICS if m.startswith("adv_")] == [m for m in METRICS if m.startswith("adv_bal_acc/")]
    assert not any("adv_acc" in v or v == "test/acc" for v in CONTEXT.values())
