"""Ilyas et al. 2019's constructed datasets ("Adversarial examples are not bugs, they are features"), plain PyTorch.

* ``det`` / ``rand``: targeted PGD from each training image toward a class ``t``, relabelled ``t``. A model trained on
  them sees labels that are wrong for a human and can only be learned through the source model's nonrobust features.
* ``robust`` (D_R) / ``nonrobust`` (D_NR): from a start image (noise, or another training image), normalised gradient
  descent on the L2 distance between the source model's penultimate features of the image and of the training image
  it stands for, which keeps its label. From a robust source the result carries only robust features; from a
  standard source, robust and nonrobust ones.

Images are in [0, 1]; MedMNIST files hold uint8, so :func:`quantize_within` rounds a constructed image onto the
1/255 grid without leaving the attack's ball.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat_model import ThreatModel
from medrobust.lightning_modules.nets.modes import attack_mode
from medrobust.utilities.errors import InputError

#: the kinds of constructed dataset, and whether each one is made by a targeted attack (else representation matching)
KINDS: dict[str, bool] = {"det": True, "rand": True, "robust": False, "nonrobust": False}
#: Ilyas et al.'s settings on CIFAR-10 (32x32x3): L2 PGD, eps 0.5, step 0.1, 100 iterations; 1000 for D_R / D_NR
PAPER = {"eps": 0.5, "step": 0.1, "attack_steps": 100, "match_steps": 1000, "dims": 32 * 32 * 3}


def paper_settings(image_shape: tuple[int, ...]) -> tuple[float, float]:
    """The paper's L2 ``eps`` and step, scaled by ``sqrt(d / 3072)`` for an image of ``d`` values.

    An L2 budget grows with the square root of the number of values it is spread over; the scaling keeps the
    root-mean-square change per value (0.5 / sqrt(3072) = 0.009, 2.3/255) that the paper allowed on CIFAR-10. At
    28x28x1 it gives eps 0.25 and step 0.05.
    """
    scale = math.sqrt(math.prod(image_shape) / PAPER["dims"])
    return PAPER["eps"] * scale, PAPER["step"] * scale


def is_attack(kind: str) -> bool:
    """Whether ``kind`` is made by a targeted attack (else by representation matching); an unknown kind raises."""
    if kind not in KINDS:
        raise InputError(f"Unknown construction kind {kind!r}; valid: {list(KINDS)}")
    return KINDS[kind]


def construction_targets(kind: str, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """The label each constructed image gets: ``(y + 1) mod C`` (det), uniform over all C classes, ``t = y`` allowed
    as in the paper (rand), or ``y`` (robust, nonrobust)."""
    is_attack(kind)
    if kind == "det":
        return (labels + 1) % num_classes
    if kind == "rand":
        return torch.randint(num_classes, labels.shape, generator=generator)
    return labels.clone()


def _toward_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits, target, reduction="sum")


def targeted_pgd(
    net: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel, steps: int, step: float
) -> torch.Tensor:
    """PGD from ``x`` (no random start, as in the paper) that descends the cross-entropy toward ``target``."""
    return PGD(threat, steps=steps, alpha=step, random_start=False, loss_fn=_toward_target).perturb(net, x, target)


def pre_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate representation of a :class:`NormalizedClassifier` (timm's ``forward_head(pre_logits=True)``)."""
    backbone = net.backbone
    return backbone.forward_head(backbone.forward_features(net.normalize(x)), pre_logits=True).flatten(1)


def match_representation(
    net: nn.Module,
    start: torch.Tensor,
    x_target: torch.Tensor,
    steps: int,
    step: float,
    tolerance: float | None = None,
    patience: int = 50,
) -> tuple[torch.Tensor, int]:
    """``(images, steps run)``: images near ``start`` whose penultimate features approach those of ``x_target``: up
    to ``steps`` of normalised gradient descent on ``||g(x) - g(x_target)||_2`` (per sample; step ``step`` in L2),
    kept in [0, 1], no ball. Each sample keeps its best (lowest-loss) iterate, not the last: a fixed step overshoots
    near the optimum. With ``tolerance``, it stops once no sample's best loss has improved by more than
    ``tolerance`` (relative) in the last ``patience`` steps: the convergence criterion the record states."""
    with attack_mode(net):
        goal = pre_logits(net, x_target).detach()
        x = start.detach().clone()
        best, best_loss = x.clone(), torch.full((len(x),), math.inf, device=x.device)
        reference, since = best_loss.clone(), 0
        for done in range(1, steps + 1):
            x.requires_grad_(True)
            per_sample = (pre_logits(net, x) - goal).norm(dim=1)
            (grad,) = torch.autograd.grad(per_sample.sum(), x)
            better = per_sample.detach() < best_loss
            best[better], best_loss[better] = x.detach()[better], per_sample.detach()[better]
            norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
            x = (x.detach() - step * grad / (norms + 1e-12)).clamp_(0, 1)
            since += 1
            if tolerance is not None and since >= patience:
                improved = (reference - best_loss) > tolerance * best_loss.abs().clamp_min(1e-12)
                if not bool(improved.any()):
                    return _final(net, goal, x, best, best_loss), done
                reference, since = best_loss.clone(), 0
        return _final(net, goal, x, best, best_loss), steps


def _final(
    net: nn.Module, goal: torch.Tensor, x: torch.Tensor, best: torch.Tensor, best_loss: torch.Tensor
) -> torch.Tensor:
    """The best iterate per sample, the last one included (it was never scored)."""
    with torch.no_grad():
        last = (pre_logits(net, x) - goal).norm(dim=1)
    better = last < best_loss
    best[better] = x[better]
    return best.detach()


def representation_gap(net: nn.Module, x: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    """``||g(x) - g(x_target)|| / ||g(x_target)||`` per sample: how far the matching got (0 is a perfect match)."""
    with torch.no_grad():
        goal = pre_logits(net, x_target)
        return (pre_logits(net, x) - goal).norm(dim=1) / goal.norm(dim=1).clamp_min(1e-12)


def quantize_within(x: torch.Tensor, x_new: torch.Tensor, threat: ThreatModel | None, iters: int = 16) -> torch.Tensor:
    """``x_new`` as uint8 on the 1/255 grid, still inside ``threat``'s ball around ``x`` (itself on the grid).

    Rounding to the nearest grid point adds up to 0.5/255 per value, which can step outside an L2 ball the attack
    filled. Per sample, the perturbation is scaled by the largest ``s`` in [0, 1] (binary search) whose rounded
    image is inside; ``s = 0`` is ``x`` itself, so the result is always inside.
    """

    def rounded(s: torch.Tensor) -> torch.Tensor:
        scale = s.view(-1, *[1] * (x.ndim - 1))
        return ((x + scale * (x_new - x)).clamp(0, 1) * 255).round() / 255

    if threat is None:
        return (rounded(torch.ones(len(x))) * 255).round().to(torch.uint8)
    limit = threat.eps * (1 + 1e-6)
    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    full = threat.distance(rounded(hi), x) <= limit
    lo[full] = 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        inside = threat.distance(rounded(mid), x) <= limit
        lo = torch.where(inside & ~full, mid, lo)
        hi = torch.where(~inside & ~full, mid, hi)
    return (rounded(lo) * 255).round().to(torch.uint8)
