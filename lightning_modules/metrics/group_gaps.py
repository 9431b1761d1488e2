"""Group fairness gaps of a shortcut: how differently a classifier treats samples with and without the feature.

For the shortcut's target class (the positives) and the two groups (carriers of the feature, and clean samples):

* ``tpr_<group>``: the share of the group's positives predicted positive, and ``dtpr = tpr_carrier - tpr_clean``;
* ``fpr_<group>``: the share of the group's negatives predicted positive, and ``dfpr = fpr_carrier - fpr_clean``;
* ``eo_gap = max(|dtpr|, |dfpr|)``: the equalised-odds gap (Hardt et al. 2016), 0 for a classifier whose errors
  ignore the feature;
* each with a percentile bootstrap 95% interval (``<gap>_lo``, ``<gap>_hi``), resampling within each group and class
  so that every replicate keeps the counts the rates are computed on. ``eo_gap`` is a maximum of absolute values,
  never negative and biased upwards, so its interval excludes 0 even when both true gaps are 0: it is a size, not a
  test; judge whether a gap exists from the signed ``dtpr`` and ``dfpr`` intervals;
* the counts behind them (``n_pos_carrier``, ``n_neg_clean``, ...) and ``<gap>_min_group``, the smallest count a gap
  rests on. A gap on fewer than :data:`MIN_GROUP` samples is flagged ``<gap>_small_group`` and left out of
  ``summary/*`` (:mod:`~medrobust.lightning_modules.metrics.summary`): its rate moves by 1/n per sample.

A rate whose group has no sample is NaN, and so is every gap built on it.
"""

from __future__ import annotations

import math

import torch

MIN_GROUP = 30
GAPS = ("dtpr", "dfpr", "eo_gap")


def group_gaps(
    pred: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    target: int,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The gaps of predictions ``pred`` against ``labels`` between ``groups`` 1 (carrier) and 0 (clean)."""
    hit = (pred == target).double()
    cells = {
        (rate, group): ((labels == target) == (rate == "tpr")) & (groups == (1 if group == "carrier" else 0))
        for rate in ("tpr", "fpr")
        for group in ("carrier", "clean")
    }
    out: dict[str, float] = {}
    for (rate, group), chosen in cells.items():
        out[f"n_{'pos' if rate == 'tpr' else 'neg'}_{group}"] = float(chosen.sum())
        out[f"{rate}_{group}"] = float(hit[chosen].mean()) if chosen.any() else math.nan
    out |= _gaps({key: out[f"{key[0]}_{key[1]}"] for key in cells})
    generator = torch.Generator().manual_seed(seed)
    draws = {key: _resample(hit[chosen], bootstrap, generator) for key, chosen in cells.items()}
    replicates = _gaps(draws)
    for gap in GAPS:
        values = replicates[gap]
        values = values[~values.isnan()] if isinstance(values, torch.Tensor) else values
        defined = isinstance(values, torch.Tensor) and len(values) > 0
        out[f"{gap}_lo"] = float(values.quantile(0.025)) if defined else math.nan
        out[f"{gap}_hi"] = float(values.quantile(0.975)) if defined else math.nan
    smallest = {
        "dtpr": min(out["n_pos_carrier"], out["n_pos_clean"]),
        "dfpr": min(out["n_neg_carrier"], out["n_neg_clean"]),
    }
    smallest["eo_gap"] = min(smallest.values())
    for gap in GAPS:
        out[f"{gap}_min_group"] = smallest[gap]
        out[f"{gap}_small_group"] = float(smallest[gap] < MIN_GROUP)
    return out


def _resample(hits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor | float:
    """``n`` bootstrap means of ``hits`` (NaN for an empty cell)."""
    if len(hits) == 0 or n == 0:
        return math.nan
    index = torch.randint(len(hits), (n, len(hits)), generator=generator)
    return hits[index].mean(1)


def _gaps(rates: dict[tuple[str, str], torch.Tensor | float]) -> dict[str, torch.Tensor | float]:
    """dtpr, dfpr and the equalised-odds gap from the four rates (numbers or bootstrap replicates alike)."""
    dtpr = rates[("tpr", "carrier")] - rates[("tpr", "clean")]
    dfpr = rates[("fpr", "carrier")] - rates[("fpr", "clean")]
    if isinstance(dtpr, torch.Tensor) or isinstance(dfpr, torch.Tensor):
        a = dtpr if isinstance(dtpr, torch.Tensor) else torch.full((1,), dtpr, dtype=torch.float64)
        b = dfpr if isinstance(dfpr, torch.Tensor) else torch.full((1,), dfpr, dtype=torch.float64)
        eo = torch.maximum(a.abs(), b.abs())
        eo = torch.where(a.isnan() | b.isnan(), torch.nan, eo)  # torch.maximum propagates NaN, but say so
    else:
        eo = max(abs(dtpr), abs(dfpr)) if not (math.isnan(dtpr) or math.isnan(dfpr)) else math.nan
    return {"dtpr": dtpr, "dfpr": dfpr, "eo_gap": eo}
