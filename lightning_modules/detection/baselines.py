"""The two standard baselines of OOD detection, scored from the logits alone: maximum softmax probability and energy.

Both follow the detectors' protocol (``fit(loader)`` then ``score(x) -> (N,)``, higher meaning more
in-distribution); neither needs fitting, so ``fit`` only returns the detector.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from medrobust.lightning_modules.nets.modes import eval_mode


class MaxSoftmax:
    """MSP (Hendrycks & Gimpel 2017): the largest softmax probability of ``net(x)``."""

    name = "msp"

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def fit(self, loader: Iterable | None = None) -> MaxSoftmax:
        return self

    @staticmethod
    def from_logits(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1).amax(dim=1)

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.net):
            return self.from_logits(self.net(x))


class Energy:
    """Negative free energy (Liu et al. 2020): ``T * logsumexp(net(x) / T)``."""

    name = "energy"

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        self.net = net
        self.temperature = temperature

    def fit(self, loader: Iterable | None = None) -> Energy:
        return self

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.temperature * torch.logsumexp(logits.float() / self.temperature, dim=1)

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.net):
            return self.from_logits(self.net(x))
