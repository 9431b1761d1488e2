"""Norm balls: the set of allowed perturbations, as objects with ``random_init``, ``step`` and ``project``.

A budget itself is a :class:`~medrobust.lightning_modules.attacks.threat.Threat`; ``threat.ball()`` builds its ball.

Budgets are in pixel units of images in [0, 1] (normalisation lives inside the model). Following MadryLab's
robustness library, each norm owns how to start, how to take a gradient step and how to project back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from medrobust.utilities.errors import InputError


def parse_eps(eps: float | str) -> float:
    """A budget as a float: ``0.0313``, ``"8/255"`` or ``"0.5"`` (no ``eval``); negative budgets are refused."""
    if isinstance(eps, bool):
        raise InputError(f"eps {eps!r} is not a number")
    if isinstance(eps, int | float):
        value = float(eps)
    else:
        text = str(eps).strip()
        try:
            if "/" in text:
                num, den = text.split("/")
                value = float(num) / float(den)
            else:
                value = float(text)
        except (ValueError, ZeroDivisionError) as err:
            raise InputError(f"eps {eps!r} is neither a number nor a fraction like '8/255'") from err
    if not value >= 0:  # also NaN
        raise InputError(f"eps must be >= 0, got {eps!r}")
    return value


class ThreatModel(ABC):
    """A norm ball of radius ``eps`` around the clean image, intersected with the [0, 1] box."""

    norm: str

    def __init__(self, eps: float | str | torch.Tensor) -> None:
        # A tensor is one radius per sample, shaped to broadcast over the batch: (N, 1, 1, 1). The minimal-distance
        # search (:mod:`~medrobust.lightning_modules.attacks.min_distance`) gives each sample its own; it starts at x.
        self.eps = eps if isinstance(eps, torch.Tensor) else parse_eps(eps)

    @abstractmethod
    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random point of the ball around ``x`` (drawn from ``generator``, else from torch's global one)."""

    @abstractmethod
    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        """One ascent step of size ``alpha`` along ``grad`` (not yet projected)."""

    @abstractmethod
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample distance in this norm."""

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The nearest point of the ball (then clipped to [0, 1])."""
        return (x + self._project_delta(x_adv - x)).clamp_(0, 1)

    @abstractmethod
    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor: ...

    def __repr__(self) -> str:
        eps = "per-sample" if isinstance(self.eps, torch.Tensor) else f"{self.eps:.6g}"
        return f"{type(self).__name__}(eps={eps})"


class LinfThreat(ThreatModel):
    """``||x' - x||_inf <= eps``; steps along the gradient's sign."""

    norm = "linf"

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # The same draw as torchattacks' PGD, so both start from the same point for the same seed.
        return (x + torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator)).clamp_(0, 1)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        return x_adv + alpha * grad.sign()

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).abs().amax(1)


class L2Threat(ThreatModel):
    """``||x' - x||_2 <= eps``; steps along the per-sample normalised gradient."""

    norm = "l2"

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # torchattacks' PGDL2 start: a random direction scaled to a radius uniform in [0, eps].
        delta = torch.empty_like(x).normal_(generator=generator)
        norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
        radius = torch.zeros_like(norms).uniform_(0, 1, generator=generator)
        return (x + delta / norms * radius * self.eps).clamp_(0, 1)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.ndim - 1))
        return x_adv + alpha * grad / (norms + 1e-10)

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.ndim - 1))
        return delta * (self.eps / (norms + 1e-12)).clamp(max=1.0)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).norm(dim=1)


def seeded_starts(threat: ThreatModel, x: torch.Tensor, ids: torch.Tensor, seed: int) -> torch.Tensor:
    """One random start per sample, drawn from a generator seeded by ``seed`` and the sample's global dataset id:
    the same start for the same image however the test split is batched or shared among processes."""
    starts, cpu = [], x.detach().cpu().float()  # one copy per batch, not one per image
    for i, sample_id in enumerate(ids.tolist()):
        # CPU generators keep 32 bits of a seed: seed and id are combined within them (distinct for ids below 1e6)
        generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(sample_id)) % 2**32)
        starts.append(threat.random_init(cpu[i : i + 1], generator=generator))
    return torch.cat(starts).to(device=x.device, dtype=x.dtype)
