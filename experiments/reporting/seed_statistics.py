"""What a study table says about seeds: a mean with its 95% interval, and paired differences between arms.

A cell of ``n`` seeds reports its mean and a two-sided 95% Student-t interval, ``mean +- t(0.975, n-1) * sd / sqrt(n)``
(no interval for one seed). Two arms run with the same seeds compare by the *paired* difference per seed (the seed
fixes the initialisation and the data order for both, so pairing removes what they share): its mean and t interval.
A difference is called one only when that interval excludes 0; otherwise it is "inconclusive at n = k", however far
apart the means look.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

LEVEL = 0.95


def t_half_width(sd: float, n: int) -> float:
    """Half the width of the 95% Student-t interval of a mean of ``n`` values with standard deviation ``sd``."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n) if n >= 2 else math.nan


def interval(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n", "sd"}`` of finite ``values``; ``lo``/``hi`` NaN for fewer than 2."""
    finite = [float(v) for v in values if _finite(v)]
    n = len(finite)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "sd": math.nan}
    mean = statistics.fmean(finite)
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": 1, "sd": math.nan}
    sd = statistics.stdev(finite)
    half = t_half_width(sd, n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "sd": sd}


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
    """``a - b`` over the seeds both arms have (keys: seeds), with its interval and a verdict: ``"higher"``,
    ``"lower"`` (the interval excludes 0), or ``"inconclusive at n = k"``."""
    seeds = sorted(set(a) & set(b), key=str)
    pairs = [float(a[s]) - float(b[s]) for s in seeds if _finite(a[s]) and _finite(b[s])]
    out = interval(pairs) | {"seeds": [s for s in seeds if _finite(a[s]) and _finite(b[s])]}
    if out["n"] >= 2 and out["sd"] == 0:
        # every seed moved by the same amount: no spread to size an interval with (a step of a discrete metric on a
        # small test set does this), so no finding either way
        out["verdict"] = f"inconclusive at n = {out['n']} (sd = 0)"
    elif out["n"] >= 2 and out["lo"] > 0:
        out["verdict"] = "higher"
    elif out["n"] >= 2 and out["hi"] < 0:
        out["verdict"] = "lower"
    else:
        out["verdict"] = f"inconclusive at n = {out['n']}"
    return out


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def show(cell: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``0.812 [0.781, 0.843] (n=3)``; one seed: ``0.812 (n=1)``; nothing: ``-``."""
    if not cell or cell.get("n", 0) == 0 or not math.isfinite(cell.get("mean", math.nan)):
        return "-"
    if cell["n"] < 2 or not math.isfinite(cell.get("lo", math.nan)):
        return f"{cell['mean']:.{digits}f} (n={cell['n']})"
    return f"{cell['mean']:.{digits}f} [{cell['lo']:.{digits}f}, {cell['hi']:.{digits}f}] (n={cell['n']})"


def show_difference(diff: Mapping[str, Any], digits: int = 3) -> str:
    """A paired difference as text: ``+0.041 [0.012, 0.070] (n=3): higher``."""
    if diff.get("n", 0) == 0:
        return "no shared seeds"
    if diff["n"] < 2:
        return f"{diff['mean']:+.{digits}f} (n=1): {diff['verdict']}"
    bounds = f"[{diff['lo']:+.{digits}f}, {diff['hi']:+.{digits}f}]"
    return f"{diff['mean']:+.{digits}f} {bounds} (n={diff['n']}): {diff['verdict']}"
