"""The Jacobian-based saliency map attack (Papernot et al. 2016), batched: an L0 attack that raises pixel pairs.

The algorithm is torchattacks' ``JSMA`` (3.5.1, targeted mode; torchattacks 3.3.0, our pinned version, has none):
per iteration, the Jacobian of every class logit; over all pairs of pixels still in the search domain (those below
0.99), the pair maximising ``alpha * |beta|`` with ``alpha > 0`` (the pair raises the target logit) and ``beta < 0``
(it lowers the others' sum); both pixels are raised by ``theta``, clipped and removed from the domain; until the
prediction is the target, or ``gamma`` of the pixels are spent. The target is the next class, ``(y + 1) % C``
(torchattacks' untargeted default takes ``(y + 1) % 10``, which is not a class of a binary task).

One difference: where no pair qualifies, torchattacks' ``argmax`` over an all-zero map raises pixel 0 twice; here that
sample stops (it is not fooled). ``tests/test_min_distance.py`` checks agreement with torchattacks on inputs where a
pair always qualifies. The pair search is ``O(pixels^2)`` memory per sample (784 at 28 px grey), done in chunks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medrobust.lightning_modules.attacks.deepfool import class_jacobian
from medrobust.lightning_modules.nets.modes import attack_mode
from medrobust.utilities.errors import InputError

PAIR_BUDGET = 2**26  # floats per chunk of the pair search (256 MiB)


def best_pairs(
    jac: torch.Tensor, target: torch.Tensor, domain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p, q, found)``: per sample, the pixel pair of the saliency map (torchattacks' rule), and whether one exists.

    ``jac``: ``(n, C, F)``; ``target``: ``(n,)``; ``domain``: ``(n, F)`` bool.
    """
    n, _, f = jac.shape
    rows = torch.arange(n, device=jac.device)
    target_grad = jac[rows, target]
    others_grad = jac.sum(1) - target_grad
    outside = (~domain).float() * 2
    t = target_grad - outside * target_grad.abs().amax(1, keepdim=True)
    o = others_grad + outside * others_grad.abs().amax(1, keepdim=True)
    p_all, q_all, found_all = [], [], []
    chunk = max(1, PAIR_BUDGET // (f * f))
    off_diagonal = ~torch.eye(f, dtype=torch.bool, device=jac.device)
    for start in range(0, n, chunk):
        tc, oc = t[start : start + chunk], o[start : start + chunk]
        alpha = tc[:, None, :] + tc[:, :, None]
        beta = oc[:, None, :] + oc[:, :, None]
        valid = (alpha > 0) & (beta < 0) & off_diagonal
        saliency = torch.where(valid, alpha * beta.abs(), torch.zeros((), device=jac.device))
        best = saliency.flatten(1).argmax(1)
        p_all.append(torch.div(best, f, rounding_mode="floor"))
        q_all.append(best % f)
        found_all.append(valid.flatten(1).any(1))
    return torch.cat(p_all), torch.cat(q_all), torch.cat(found_all)


def jsma(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, theta: float = 1.0, gamma: float = 0.1
) -> torch.Tensor:
    """Adversarial images targeting class ``(y + 1) % num_classes``; samples already at the target are unchanged."""
    if num_classes < 2 or not 0 < gamma <= 1 or theta <= 0:
        raise InputError(f"JSMA needs 2+ classes, 0 < gamma <= 1 and theta > 0; got {num_classes}, {gamma}, {theta}")
    target = (y + 1) % num_classes
    x_adv = x.detach().clone()
    features = x_adv[0].numel()
    domain = (x_adv < 0.99).flatten(1)
    max_iters = math.ceil(features * gamma / 2)
    active = torch.arange(len(x), device=x.device)
    with attack_mode(net):
        for _ in range(max_iters):
            if len(active) == 0:
                break
            logits, jac = class_jacobian(net, x_adv[active])
            keep = (logits.argmax(1) != target[active]) & domain[active].any(1)
            active, jac = active[keep], jac[keep]
            if len(active) == 0:
                break
            p, q, found = best_pairs(jac.flatten(2), target[active], domain[active])
            active, p, q = active[found], p[found], q[found]
            flat = x_adv.view(len(x_adv), -1)
            flat[active, p] = (flat[active, p] + theta).clamp(0, 1)
            flat[active, q] = (flat[active, q] + theta).clamp(0, 1)
            domain[active, p] = False
            domain[active, q] = False
    return x_adv.detach()
