"""TRADES' inner maximisation (Zhang et al. 2019), as the reference implementation computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat_model import ThreatModel
from medrobust.lightning_modules.losses import kl_sum
from medrobust.lightning_modules.nets.modes import eval_mode


class TradesAttack:
    """Find ``x'`` in the ball around ``x`` maximising ``KL(f(x) || f(x'))``.

    As in the reference code (``trades.py``, ``model.eval()`` before the loop), ``f(x)`` and ``f(x')`` are both computed
    in eval mode and on the same input ``x``, so the inner loss is exactly 0 at ``x' = x`` whatever BatchNorm's batch
    statistics are. The search starts at ``x + start_noise * N(0, 1)``, since the KL's gradient vanishes at ``x``.

    Args:
        threat: the allowed perturbations.
        steps: ascent steps.
        alpha: step size; default ``2.5 * eps / steps``.
        start_noise: standard deviation of the Gaussian start (0.001 in the reference).

    Example:
        >>> from medrobust.lightning_modules.attacks.threat_model import LinfThreat
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(2, 1, 2, 2)
        >>> attack = TradesAttack(LinfThreat("8/255"), steps=3)
        >>> float(attack.inner_loss(net, x, attack.target(net, x))) < 1e-6
        True
    """

    def __init__(self, threat: ThreatModel, steps: int = 10, alpha: float | None = None, start_noise: float = 0.001):
        self.pgd = PGD(threat, steps, alpha, random_start=False, loss_fn=kl_sum)
        self.start_noise = start_noise

    @staticmethod
    def target(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``softmax(f(x))`` in eval mode, without gradient: what ``x'`` is compared with."""
        with eval_mode(net):
            return F.softmax(net(x), dim=1)

    @staticmethod
    def inner_loss(net: nn.Module, x_adv: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The objective the search ascends, summed over the batch: ``KL(target || softmax(f(x')))`` in eval mode."""
        with eval_mode(net):
            return kl_sum(net(x_adv), target)

    def perturb(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Adversarial images for ``x`` (detached, within the ball and [0, 1])."""
        x = x.detach()
        start = x + self.start_noise * torch.randn_like(x)
        return self.pgd.perturb(net, x, self.target(net, x), x_init=start)
