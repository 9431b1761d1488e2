"""Threat models: the set of allowed perturbations, as objects with ``random_init``, ``step`` and ``project``.

Budgets are in pixel units of images in [0, 1] (normalisation lives inside the model). Following MadryLab's
robustness library, each norm owns how to start, how to take a gradient step and how to project back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from medrobust.utilities.errors import InputError

NORMS = ("linf", "l2")


def parse_eps(eps: float | str) -> float:
    """A budget as a float: ``0.0313``, ``"8/255"`` or ``"0.5"`` (no ``eval``)."""
    if isinstance(eps, int | float):
        value = float(eps)
    else:
        text = eps.strip()
        try:
            if "/" in text:
                num, den = text.split("/")
                value = float(num) / float(den)
            else:
                value = float(text)
        except (ValueError, ZeroDivisionError) as err:
            raise InputError(f"eps {eps!r} is neither a number nor a fraction like '8/255'") from err
    if value < 0:
        raise InputError(f"eps must be >= 0, got {eps!r}")
    return value


def threat_label(norm: str, eps: float) -> str:
    """A metric-name-safe name that says what the budget is: ``linf_8_255`` (8/255), ``linf_0.1``, ``l2_0.5``, ``l2_1``.

    Only L-inf budgets are written as fractions of 255, and only when they are a whole number of grey levels; an L2
    budget is a length in pixel units and is always written as the number itself.
    """
    if norm not in NORMS:
        raise InputError(f"Unknown norm {norm!r}; valid: {NORMS}")
    k = eps * 255
    if norm == "linf" and eps > 0 and abs(k - round(k)) < 1e-6:
        return f"linf_{round(k)}_255"
    return f"{norm}_{eps:g}"


def parse_threat_label(label: str) -> tuple[str, float]:
    """The inverse of :func:`threat_label`: ``"linf_8_255"`` -> ``("linf", 8/255)``, ``"l2_0.5"`` -> ``("l2", 0.5)``."""
    norm, _, eps = label.partition("_")
    if norm not in NORMS:
        raise InputError(f"{label!r} is not a threat label such as 'linf_8_255' or 'l2_0.5'")
    return norm, parse_eps(eps.replace("_", "/"))


class ThreatModel(ABC):
    """A norm ball of radius ``eps`` around the clean image, intersected with the [0, 1] box."""

    norm: str

    def __init__(self, eps: float | str | torch.Tensor) -> None:
        # A tensor is one radius per sample, shaped to broadcast over the batch: (N, 1, 1, 1). The minimal-distance
        # search (:mod:`~medrobust.lightning_modules.attacks.min_distance`) gives each sample its own; it starts at x.
        self.eps = eps if isinstance(eps, torch.Tensor) else parse_eps(eps)

    @abstractmethod
    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        """A random point of the ball around ``x``."""

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

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        # The same draw as torchattacks' PGD, so both start from the same point for the same seed.
        return (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0, 1)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        return x_adv + alpha * grad.sign()

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).abs().amax(1)


class L2Threat(ThreatModel):
    """``||x' - x||_2 <= eps``; steps along the per-sample normalised gradient."""

    norm = "l2"

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        # torchattacks' PGDL2 start: a random direction scaled to a radius uniform in [0, eps].
        delta = torch.empty_like(x).normal_()
        norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
        radius = torch.zeros_like(norms).uniform_(0, 1)
        return (x + delta / norms * radius * self.eps).clamp_(0, 1)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.ndim - 1))
        return x_adv + alpha * grad / (norms + 1e-10)

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.ndim - 1))
        return delta * (self.eps / (norms + 1e-12)).clamp(max=1.0)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).norm(dim=1)


def threat_model(norm: str, eps: float | str) -> ThreatModel:
    """``"linf"`` or ``"l2"`` ball of radius ``eps``."""
    if norm == "linf":
        return LinfThreat(eps)
    if norm == "l2":
        return L2Threat(eps)
    raise InputError(f"Unknown norm {norm!r}; valid: {NORMS}")
