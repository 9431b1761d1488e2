"""Budget-free robustness: per sample, the smallest perturbation an attack needs to change the prediction.

Three estimates, each an upper bound on the true minimal distance in its norm (an attack can only miss closer
adversarial examples):

* ``deepfool``: L2 length of DeepFool's perturbation (:mod:`~medrobust.lightning_modules.attacks.deepfool`);
* ``jsma``: L0, the share of input values JSMA changed (:mod:`~medrobust.lightning_modules.attacks.jsma`), within its
  ``gamma`` budget;
* ``min_linf``: L-inf, by bisection over eps: PGD (from the clean image) at eps_max first, then ``bisections`` halvings
  of each fooled sample's bracket ``[lo, hi]``; the distance is the final ``hi``, within ``eps_max / 2**bisections``.

One rule for every attack: a misclassified sample is at distance 0 (it needs no perturbation; dropping it would make
a less accurate model look more robust), one the attack could not flip is at ``inf``, and one where the attack is
undefined (DeepFool's 0/0 step) is NaN, which :func:`distance_summary` counts (``undefined``) and treats as ``inf``.
:func:`distance_summary` turns a vector of these into the reported numbers; no reported number is NaN for a
non-empty vector.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from medrobust.lightning_modules.attacks.deepfool import deepfool
from medrobust.lightning_modules.attacks.jsma import jsma
from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat_model import LinfThreat
from medrobust.lightning_modules.losses import cross_entropy_sum
from medrobust.lightning_modules.nets.modes import eval_mode

#: attack -> the norm its distance is measured in
DISTANCE_ATTACKS = {"deepfool": "l2", "jsma": "l0", "min_linf": "linf"}


@dataclass(frozen=True)
class DistanceSettings:
    """Settings of the three searches (defaults: torchattacks' for DeepFool and JSMA)."""

    deepfool_steps: int = 50
    deepfool_overshoot: float = 0.02
    deepfool_overshoot_on: str = "total"
    jsma_theta: float = 1.0
    jsma_gamma: float = 0.1
    linf_max: float = 16 / 255
    linf_bisections: int = 6
    linf_pgd_steps: int = 10


def _wrong(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with eval_mode(net):
        return net(x).argmax(1) != y


def min_linf(net: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: DistanceSettings) -> torch.Tensor:
    """Per-sample L-inf distance by bisection with PGD (``inf`` where PGD at ``linf_max`` fails)."""
    shape = (-1, *[1] * (x.ndim - 1))

    def fooled(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        pgd = PGD(
            LinfThreat(eps.view(shape)),
            settings.linf_pgd_steps,
            random_start=False,
            loss_fn=cross_entropy_sum,
            keep_first_success=True,
        )
        return _wrong(net, pgd.perturb(net, x[idx], y[idx]), y[idx])

    dist = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    idx = torch.arange(len(x), device=x.device)
    hi = torch.full((len(x),), settings.linf_max, dtype=x.dtype, device=x.device)
    found = fooled(idx, hi)
    idx, hi = idx[found], hi[found]
    lo = torch.zeros_like(hi)
    for _ in range(settings.linf_bisections):
        if len(idx) == 0:
            break
        mid = (lo + hi) / 2
        hit = fooled(idx, mid)
        hi, lo = torch.where(hit, mid, hi), torch.where(hit, lo, mid)
    dist[idx] = hi
    return dist


def minimal_distances(
    attack: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: DistanceSettings
) -> torch.Tensor:
    """``(N,)`` distances of ``attack`` (see the module docstring): 0 where ``x`` is misclassified already, ``inf``
    where the attack did not change the prediction, NaN where it was undefined. The search runs in fp32 (at least),
    outside any autocast: a bf16 run measures the same distances as an fp32 one."""
    low = [p for p in net.parameters() if p.is_floating_point() and p.element_size() < 4]
    if low:  # a bf16-true or 16-true network: measured on an fp32 copy of it
        net = copy.deepcopy(net).float()
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least (a float64 network stays so)
        correct = ~_wrong(net, x, y)
        out = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        idx = correct.nonzero().flatten()
        if len(idx) == 0:
            return out.cpu()
        xs, ys = x[idx], y[idx]
        if attack == "min_linf":
            out[idx] = min_linf(net, xs, ys, settings)
            return out.cpu()
        undefined = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
        if attack == "deepfool":
            s = settings
            x_adv = deepfool(net, xs, ys, s.deepfool_steps, s.deepfool_overshoot, s.deepfool_overshoot_on, undefined)
            dist = (x_adv - xs).flatten(1).norm(dim=1)
        else:
            x_adv = jsma(net, xs, ys, num_classes, settings.jsma_theta, settings.jsma_gamma)
            dist = ((x_adv - xs).flatten(1) != 0).to(x.dtype).mean(1)
        dist = torch.where(_wrong(net, x_adv, ys), dist, torch.full_like(dist, math.inf))
        out[idx] = torch.where(undefined, torch.full_like(dist, math.nan), dist)
        return out.cpu()


def distance_summary(distances: torch.Tensor) -> dict[str, float]:
    """Over every measured sample (misclassified ones at 0, undefined ones counted and taken as ``inf``): their count
    ``n``, ``misclassified`` and ``undefined`` counts, the share of the correctly classified ones the attack flipped
    (``fooled``), and the quartiles and median of the distance (``inf`` once the quantile reaches a sample not
    flipped: a median of ``inf`` when at least half of all samples were not).
    NaN only for an empty vector (and ``fooled``/``mean_fooled`` when nothing was correct or flipped)."""
    d = distances.double()
    undefined = int(d.isnan().sum())
    d = torch.where(d.isnan(), math.inf, d)
    n = len(d)
    if n == 0:
        return {"n": 0, "misclassified": 0, "undefined": 0, "fooled": math.nan}
    misclassified = int((d == 0).sum())
    flipped = d[(d > 0) & d.isfinite()]
    q = [_quantile(d, p) for p in (0.25, 0.5, 0.75)]
    correct = n - misclassified
    return {
        "n": n,
        "misclassified": misclassified,
        "undefined": undefined,
        "fooled": float(len(flipped) / correct) if correct else math.nan,
        "median": float(q[1]),
        "q25": float(q[0]),
        "q75": float(q[2]),
        "mean_fooled": float(flipped.mean()) if len(flipped) else math.nan,
    }


def _quantile(d: torch.Tensor, p: float) -> float:
    """``torch.quantile``'s linear interpolation, where a quantile that reaches into the ``inf`` values is ``inf``
    (a huge finite stand-in interpolated to 2.5e29 between 0.3 and "not flipped")."""
    values = d.sort().values
    pos = p * (len(values) - 1)
    lo, frac = math.floor(pos), pos - math.floor(pos)
    low = float(values[lo])
    if frac == 0 or math.isinf(low):
        return low
    high = float(values[lo + 1])
    return math.inf if math.isinf(high) else low + frac * (high - low)
