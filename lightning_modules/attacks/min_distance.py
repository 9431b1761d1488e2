"""Budget-free robustness: per sample, the smallest perturbation an attack needs to change the prediction.

Three estimates, each an upper bound on the true minimal distance in its norm (an attack can only miss closer
adversarial examples):

* ``deepfool``: L2 length of DeepFool's perturbation (:mod:`~medrobust.lightning_modules.attacks.deepfool`);
* ``jsma``: L0, the share of input values JSMA changed (:mod:`~medrobust.lightning_modules.attacks.jsma`), within its
  ``gamma`` budget;
* ``min_linf``: L-inf, by bisection over eps: PGD (from the clean image) at eps_max first, then ``bisections`` halvings
  of each fooled sample's bracket ``[lo, hi]``; the distance is the final ``hi``, within ``eps_max / 2**bisections``.

Only correctly classified samples have a distance; a misclassified one gets NaN (it needs none), and one the attack
could not flip gets ``inf``. :func:`distance_summary` turns a vector of these into the reported numbers.
"""

from __future__ import annotations

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
_NOT_FLIPPED = 1e30


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
        pgd = PGD(LinfThreat(eps.view(shape)), settings.linf_pgd_steps, random_start=False, loss_fn=cross_entropy_sum)
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
    """``(N,)`` distances of ``attack`` (see the module docstring): NaN where ``x`` is misclassified already, ``inf``
    where the attack did not change the prediction."""
    correct = ~_wrong(net, x, y)
    out = torch.full((len(x),), math.nan, dtype=x.dtype, device=x.device)
    idx = correct.nonzero().flatten()
    if len(idx) == 0:
        return out.cpu()
    xs, ys = x[idx], y[idx]
    if attack == "min_linf":
        out[idx] = min_linf(net, xs, ys, settings)
        return out.cpu()
    if attack == "deepfool":
        x_adv = deepfool(
            net, xs, ys, settings.deepfool_steps, settings.deepfool_overshoot, settings.deepfool_overshoot_on
        )
        dist = (x_adv - xs).flatten(1).norm(dim=1)
    else:
        x_adv = jsma(net, xs, ys, num_classes, settings.jsma_theta, settings.jsma_gamma)
        dist = ((x_adv - xs).flatten(1) != 0).to(x.dtype).mean(1)
    out[idx] = torch.where(_wrong(net, x_adv, ys), dist, torch.full_like(dist, math.inf))
    return out.cpu()


def distance_summary(distances: torch.Tensor) -> dict[str, float]:
    """Over the correctly classified samples (non-NaN): their count ``n``, the share the attack flipped
    (``fooled``), and the quartiles and median of the distance (``inf`` where over half were not flipped; NaN for
    none)."""
    d = distances[~distances.isnan()].double()
    n = len(d)
    if n == 0:
        return {"n": 0, "fooled": math.nan, "median": math.nan, "q25": math.nan, "q75": math.nan}
    # inf (not flipped) as a huge stand-in, so that interpolating between two of them stays "not flipped"
    q = torch.quantile(d.clamp(max=_NOT_FLIPPED), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    q = torch.where(q >= _NOT_FLIPPED / 2, math.inf, q)
    finite = d[d.isfinite()]
    return {
        "n": n,
        "fooled": float(len(finite) / n),
        "median": float(q[1]),
        "q25": float(q[0]),
        "q75": float(q[2]),
        "mean_fooled": float(finite.mean()) if len(finite) else math.nan,
    }
