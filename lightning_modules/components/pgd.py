"""Projected gradient descent on a bare network, for any threat model and loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.frozen_mode import attack_mode
from lightning_modules.components.threat_model import ThreatModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def bce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-label loss, which torchattacks' attacks (cross-entropy only) cannot use."""
    return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum")


def kl_sum(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """TRADES' inner loss: KL(f(x) || f(x')) with ``clean_probs = softmax(f(x))``."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="sum")


class PGD:
    """Maximise ``loss_fn(net(x'), target)`` over the threat model's ball by projected gradient ascent.

    Input gradients come from ``torch.autograd.grad``, so parameter ``.grad`` is never touched; the network runs in
    eval mode and every submodule's mode is restored afterwards. ``steps=1, alpha=1.25 * eps, random_start=True`` is
    FGSM with a random start (Wong et al. 2020).

    Args:
        threat: the allowed perturbations.
        steps: ascent steps.
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.).
        random_start: start from a random point of the ball rather than ``x``.
        restarts: independent random starts; per sample, the one with the highest final loss is kept.
        loss_fn: ``(logits, target) -> summed loss``; cross-entropy by default.

    Example:
        >>> from lightning_modules.components.threat_model import LinfThreat
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
        >>> x_adv = PGD(LinfThreat("8/255"), steps=3).perturb(net, x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        alpha: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss_fn: LossFn = cross_entropy_sum,
    ) -> None:
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        self.threat = threat
        self.steps = steps
        self.alpha = alpha if alpha is not None else 2.5 * threat.eps / steps
        self.random_start = random_start
        self.restarts = restarts
        self.loss_fn = loss_fn

    def perturb(
        self, net: nn.Module, x: torch.Tensor, target: torch.Tensor, x_init: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Adversarial images for ``x`` (detached, within the ball and [0, 1]); ``x_init`` overrides the first start."""
        if self.threat.eps == 0:
            return x.detach().clone()
        with attack_mode(net):
            x = x.detach().clone()
            target = target.detach().clone()
            best, best_loss = x, None
            for restart in range(self.restarts):
                start = x_init.detach() if x_init is not None and restart == 0 else None
                x_adv = self._run(net, x, target, start)
                if self.restarts == 1:
                    return x_adv
                with torch.no_grad():
                    loss = self._per_sample_loss(net(x_adv), target)
                if best_loss is None:
                    best, best_loss = x_adv, loss
                else:
                    better = loss > best_loss
                    best = torch.where(better.view(-1, *[1] * (x.ndim - 1)), x_adv, best)
                    best_loss = torch.maximum(loss, best_loss)
            return best

    def _run(self, net: nn.Module, x: torch.Tensor, target: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
        if start is not None:
            x_adv = self.threat.project(start.clone(), x)
        else:
            x_adv = self.threat.random_init(x) if self.random_start else x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = self.loss_fn(net(x_adv), target)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.threat.project(self.threat.step(x_adv.detach(), grad, self.alpha), x)
        return x_adv.detach()

    def _per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.loss_fn(logits[i : i + 1], target[i : i + 1]) for i in range(len(logits))])
