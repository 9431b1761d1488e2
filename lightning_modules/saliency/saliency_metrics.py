"""How well a saliency map agrees with a known evidence region, and how stable it is: plain PyTorch, batched.

Maps are ``(N, H, W)`` (channels already reduced), masks ``(N, H, W)`` binary. Every function returns one value per
sample, so callers can average, gather across processes and take spreads as they like.

* :func:`energy_in_mask`: the share of the map's positive mass inside the mask (Quantus' *relevance mass accuracy*
  on the positive part). A map with no positive mass has no share: NaN.
* :func:`pointing_game`: 1 when the map's maximum lies inside the mask. Tie-aware: every pixel within ``tolerance``
  of the maximum must lie inside, so a flat map (every pixel a maximum) does not score; an empty mask is an error,
  not a hit (Quantus' ``PointingGame`` counts it as a hit).
* :func:`topk_iou`: IoU of the map's top ``k`` share of pixels with the mask. Pixels tied at the threshold share the
  remaining places at random: the IoU of the expected intersection (within 1.5% of the expected IoU; deterministic,
  so the result does not depend on how a sort breaks ties). Taking every tied pixel would turn "top 10%" into the
  whole image on a ReLU'd map with few positive pixels, or into whole blocks on an upsampled Grad-CAM map.
* :func:`chance_and_ceiling`: each score's chance level (a map that knows nothing: the mask's share of the image for
  energy and pointing, a random top-k set for IoU) and its ceiling (1, and for IoU ``min(k, m) / max(k, m)`` for a
  top-k set of ``k`` pixels and a mask of ``m``: a 7x7 mask caps top-10% IoU at 0.63 at 28 px, a 4x4 marker at 0.21),
  and :func:`normalised` the score ``(x - chance) / (ceiling - chance)``: 0 at chance, 1 at the ceiling.
* :func:`max_sensitivity` and :func:`rank_stability`: the largest relative change of the map over small random
  perturbations of the input (Yeh et al. 2019, normalised by the map's norm as Quantus does), and the mean Spearman
  rank correlation between the map before and after them.

:func:`summarise` reduces a table of per-image scores (:data:`COLUMNS`) to means, spreads, the correctly classified
images' means and per-class means.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from medrobust.utilities.errors import InputError

#: the scores that have a chance level and a ceiling (:func:`chance_and_ceiling`)
BOUNDED = ("energy", "pointing", "iou")
#: per-image score columns (SaliencyEvaluation gathers them across processes), in this order
COLUMNS = (
    "energy",
    "pointing",
    "iou",
    "sensitivity",
    "rank_corr",
    *(f"{m}_norm" for m in BOUNDED),
    *(f"{m}_chance" for m in BOUNDED),
    "iou_ceiling",
    "correct",
    "label",
)
METRICS = COLUMNS[:-2]
#: the metrics also summarised per class (``energy_class0``): a model may look at the evidence of one class only
PER_CLASS = ("energy", "pointing")


def check_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``masks`` as bool after checking them against ``maps``: same ``(N, H, W)`` shape, binary, none empty."""
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise InputError(
            f"masks of shape {tuple(masks.shape)} do not match saliency maps of shape {tuple(maps.shape)}: both must "
            "be (N, H, W), one mask per image at the image's size"
        )
    if masks.dtype != torch.bool:
        if not torch.isin(masks.unique(), torch.tensor([0, 1], dtype=masks.dtype, device=masks.device)).all():
            raise InputError(f"masks must be binary (0/1 or bool); found values {masks.unique()[:8].tolist()}")
        masks = masks.bool()
    empty = (~masks.flatten(1).any(1)).nonzero().flatten()
    if len(empty):
        raise InputError(
            f"{len(empty)} empty masks (samples {empty[:8].tolist()}): an image without an evidence region cannot be "
            "scored; leave it out"
        )
    return masks


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Positive mass inside the mask over all positive mass, per sample; NaN where the map has no positive mass."""
    masks = check_masks(maps, masks)
    positive = maps.clamp_min(0).flatten(1).double()
    total = positive.sum(1)
    inside = (positive * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.nan).float()


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """1.0 where every maximal pixel (within ``tolerance`` times the map's range) is inside the mask, else 0.0."""
    masks = check_masks(maps, masks)
    flat = maps.flatten(1).double()
    top, bottom = flat.max(1).values, flat.min(1).values
    peaks = flat >= (top - tolerance * (top - bottom)).unsqueeze(1)
    hit = ~(peaks & ~masks.flatten(1)).any(1)
    return (hit & (top > bottom)).float()  # a constant map points nowhere


def topk_iou(maps: torch.Tensor, masks: torch.Tensor, k: float = 0.1) -> torch.Tensor:
    """IoU of the top ``k`` share of each map's pixels with the mask: the expected intersection over the union it
    implies, pixels tied at the threshold sharing the remaining places at random."""
    if not 0.0 < k <= 1.0:
        raise InputError(f"top-k share must be in (0, 1], got {k}")
    masks = check_masks(maps, masks).flatten(1)
    flat = maps.flatten(1).double()
    count = topk_count(flat.shape[1], k)
    threshold = flat.topk(count, dim=1).values[:, -1:]
    above, tied = flat > threshold, flat == threshold
    places = count - above.sum(1).double()  # what the tied pixels share, at random
    inside = (above & masks).sum(1).double() + places * (tied & masks).sum(1).double() / tied.sum(1).double()
    return (inside / (count + masks.sum(1).double() - inside)).float()


def topk_count(pixels: int, k: float) -> int:
    """The number of pixels in a top-``k`` share: ``round(k * pixels)``, at least 1."""
    return max(1, round(k * pixels))


def chance_and_ceiling(masks: torch.Tensor, k: float = 0.1) -> dict[str, torch.Tensor]:
    """Per sample: ``<score>_chance`` for :data:`BOUNDED` and ``iou_ceiling`` (energy's and pointing's is 1). At
    chance, a map's positive mass and its peak fall anywhere alike (the mask's share ``m / n``), and its top-k set is
    ``c`` random pixels: expected intersection ``c * m / n``, IoU ``E[I] / (c + m - E[I])`` (the same expectation
    :func:`topk_iou` uses for ties)."""
    flat = masks.flatten(1).bool()
    n, m = flat.shape[1], flat.sum(1).double()
    c = topk_count(n, k)
    share = m / n
    expected = c * share
    return {
        "energy_chance": share.float(),
        "pointing_chance": share.float(),
        "iou_chance": (expected / (c + m - expected)).float(),
        "iou_ceiling": (m.clamp(max=c) / m.clamp(min=c)).float(),
    }


def normalised(score: torch.Tensor, chance: torch.Tensor, ceiling: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``(score - chance) / (ceiling - chance)``: 0 at chance, 1 at the ceiling, negative below chance."""
    return (score - chance) / (ceiling - chance)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (average ranks for ties); NaN where
    either row is constant (as scipy): a constant map has no ranking to agree or disagree with, and 0 would read as
    "fully dissimilar"."""
    ra, rb = _ranks(a.flatten(1).double()), _ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(1) / denominator.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(denominator > 0, rho, torch.nan).float()


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1, tied values sharing their average rank (as scipy's ``rankdata``)."""
    order = x.argsort(dim=1, stable=True)
    sorted_x = x.gather(1, order)
    ranks = torch.empty_like(x)
    for row in range(len(x)):
        _, inverse, counts = torch.unique_consecutive(sorted_x[row], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        average = ends - (counts.double() - 1) / 2
        ranks[row, order[row]] = average[inverse]
    return ranks


def perturbations(x: torch.Tensor, radius: float, n: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``n`` copies of ``x`` with uniform noise in the L-inf ball of ``radius``, kept in [0, 1]."""
    noise = torch.rand((n, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
    return [(x + (2 * e - 1) * radius).clamp(0, 1) for e in noise]


def max_sensitivity(
    explain: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    perturbed: list[torch.Tensor],
    normalise: bool = True,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample, ``max_j ||explain(x_j) - explain(x)||_2`` over the perturbed inputs ``x_j``, divided by
    ``||explain(x)||_2`` when ``normalise`` (NaN for a zero map)."""
    base = explain(x) if base is None else base
    worst = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for x_j in perturbed:
        worst = torch.maximum(worst, (explain(x_j) - base).flatten(1).double().norm(dim=1))
    if not normalise:
        return worst.float()
    norm = base.flatten(1).double().norm(dim=1)
    return torch.where(norm > 0, worst / norm.clamp_min(torch.finfo(torch.float64).tiny), torch.nan).float()


def rank_stability(
    explain: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    perturbed: list[torch.Tensor],
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample, the mean Spearman correlation of ``explain(x)`` with ``explain(x_j)`` over the perturbed inputs."""
    base = explain(x) if base is None else base
    return torch.stack([spearman(base, explain(x_j)) for x_j in perturbed]).mean(0)


def summarise(table: torch.Tensor) -> dict[str, float]:
    """Per metric, the mean over images where it is defined, ``<metric>_std``, and the mean over the correctly
    classified images (``<metric>_correct``); ``n`` and ``n_correct``; for :data:`PER_CLASS`, the mean per class
    (``<metric>_class<k>``) of every class among the images."""
    out: dict[str, float] = {"n": float(len(table))}
    correct = table[:, COLUMNS.index("correct")] == 1
    out["n_correct"] = float(correct.sum())
    for column, metric in enumerate(METRICS):
        values = table[:, column]
        defined = values[~values.isnan()]
        out[metric] = float(defined.mean()) if len(defined) else math.nan
        out[f"{metric}_std"] = float(defined.std()) if len(defined) > 1 else math.nan
        on_correct = values[correct & ~values.isnan()]
        out[f"{metric}_correct"] = float(on_correct.mean()) if len(on_correct) else math.nan
    labels = table[:, COLUMNS.index("label")]
    for k in sorted({int(v) for v in labels.tolist()}):
        for metric in PER_CLASS:
            values = table[labels == k, METRICS.index(metric)]
            values = values[~values.isnan()]
            out[f"{metric}_class{k}"] = float(values.mean()) if len(values) else math.nan
    return out
