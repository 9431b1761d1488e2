"""Issue 25.20: study tables give a 95% interval per cell and call a difference only when the paired interval
excludes 0; checked against scipy's t interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medrobust.experiments.reporting.seed_statistics import interval, paired_difference, show, show_difference


def test_the_interval_is_scipys_student_t_interval() -> None:
    values = [0.81, 0.84, 0.79, 0.86]
    cell = interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert cell["lo"] == pytest.approx(lo) and cell["hi"] == pytest.approx(hi) and cell["n"] == 4
    one = interval([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["lo"]) and show(one) == "0.500 (n=1)"
    assert interval([float("nan"), 0.2, 0.4])["n"] == 2  # a NaN seed is not a value
    assert show(cell).startswith("0.825 [") and show(None) == "-"


def test_a_difference_is_called_only_when_the_paired_interval_excludes_zero() -> None:
    """The arms' means are 0.05 apart in both cases; paired by seed, a consistent gap is a finding and a noisy one
    is inconclusive. Unpaired, the consistent gap would sit inside the seed spread (0.70-0.90)."""
    base = {0: 0.70, 1: 0.80, 2: 0.90}
    consistent = {0: 0.75, 1: 0.86, 2: 0.94}  # +0.05, +0.06, +0.04
    noisy = {0: 0.85, 1: 0.80, 2: 0.90}
    assert paired_difference(consistent, base)["verdict"] == "higher"
    assert paired_difference(base, consistent)["verdict"] == "lower"
    assert paired_difference(noisy, base)["verdict"] == "inconclusive at n = 3"
    assert paired_difference({0: 0.9}, {0: 0.1})["verdict"] == "inconclusive at n = 1"
    only_shared = paired_difference({0: 0.9, 1: 0.8, 5: 0.1}, {0: 0.7, 1: 0.6, 2: 0.0})
    assert only_shared["n"] == 2 and only_shared["seeds"] == [0, 1]
    assert show_difference(paired_difference(consistent, base)).endswith("(n=3): higher")
    # the same step on every seed (a discrete metric on a small test set) has no spread: no finding
    assert paired_difference({0: 0.51, 1: 0.51}, {0: 0.50, 1: 0.50})["verdict"] == "inconclusive at n = 2 (sd = 0)"
