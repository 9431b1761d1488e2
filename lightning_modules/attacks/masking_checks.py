"""Gradient-masking checks in the spirit of AutoAttack's: signs that a robust accuracy is overestimated."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrobust.lightning_modules.attacks.attack_suite import AttackSpec, build_attack
from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.losses import attack_loss
from medrobust.lightning_modules.metrics.confusion import errors
from medrobust.lightning_modules.nets.modes import attack_mode, eval_mode


def white_box_checks(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> dict[str, Any]:
    """Outputs are logits (not probabilities), the model is deterministic, and input gradients are non-zero."""
    with attack_mode(net):
        x = x.clone().requires_grad_(True)
        out = net(x)
        (grad,) = torch.autograd.grad(attack_loss(task)(out, y), x)
        out = out.detach()
    with eval_mode(net):
        again = net(x)
    rows_sum_to_one = torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4)
    looks_like_probs = bool((out >= 0).all() and (out <= 1).all() and rows_sum_to_one)
    nonzero = float((grad.flatten(1).abs().amax(1) > 0).float().mean())
    return {
        "outputs_are_logits": not looks_like_probs,
        "deterministic": bool(torch.allclose(out, again, atol=1e-5)),
        "nonzero_input_grad": nonzero >= 0.99,
        "nonzero_input_grad_fraction": nonzero,
    }


def black_box_check(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    eps: float,
    pgd_steps: int,
    queries: int,
    seed: int,
) -> dict[str, Any]:
    """A black-box Square attack must not beat white-box PGD at L-inf ``eps`` (by more than 5 points of accuracy)."""
    acc = {}
    for spec in (AttackSpec("pgd", Threat("linf", eps), pgd_steps), AttackSpec("square", Threat("linf", eps))):
        x_adv = build_attack(spec, "multiclass", num_classes, square_queries=queries, seed=seed)(net, x, y)
        with eval_mode(net):
            acc[spec.attack] = 1 - float(errors(net(x_adv), y, "multiclass").float().mean())
    return {
        "black_box_not_better": acc["square"] >= acc["pgd"] - 0.05,
        "black_box_square_acc": acc["square"],
        "black_box_pgd_acc": acc["pgd"],
    }
