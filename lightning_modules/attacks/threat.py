"""A robustness budget as one value: a norm and a radius in pixel units, from the config to the metric name.

``Threat.parse("linf", "8/255")`` is how a config's budget becomes a number (no ``eval``); ``threat.label`` is how it
is written into metric names (``linf_8_255``) and ``Threat.from_label`` reads it back; ``threat.ball()`` is the
set of allowed perturbations that attacks step and project in. Callbacks, attacks, the report and the studies use
this one value, so a budget is never spelled two ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from medrobust.lightning_modules.attacks.threat_model import L2Threat, LinfThreat, ThreatModel, parse_eps
from medrobust.utilities.errors import InputError

NORMS = ("linf", "l2")
__all__ = ["NORMS", "Threat", "parse_eps"]


@dataclass(frozen=True, order=True)
class Threat:
    """A norm ball's norm and radius: ``Threat("linf", 8 / 255)``; ordered by norm, then radius.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        eps: the radius in pixel units of images in [0, 1] (normalisation lives inside the model).
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"Unknown norm {self.norm!r}; valid: {list(NORMS)}")
        object.__setattr__(self, "eps", parse_eps(self.eps))

    @classmethod
    def parse(cls, norm: str, eps: float | str) -> Threat:
        """From a config's spelling: ``Threat.parse("linf", "8/255")``."""
        return cls(norm, parse_eps(eps))

    @property
    def label(self) -> str:
        """The metric-name-safe name: ``linf_8_255`` (8/255), ``linf_0.1``, ``l2_0.5``, ``l2_1``.

        Only L-inf budgets are written as fractions of 255, and only when they are a whole number of grey levels; an
        L2 budget is a length in pixel units and is always written as the number itself.
        """
        k = self.eps * 255
        if self.norm == "linf" and self.eps > 0 and abs(k - round(k)) < 1e-6:
            return f"linf_{round(k)}_255"
        return f"{self.norm}_{self.eps:g}"

    @classmethod
    def from_label(cls, label: str) -> Threat:
        """The inverse of :attr:`label`: ``"linf_8_255"`` -> ``Threat("linf", 8/255)``."""
        norm, _, eps = label.partition("_")
        if norm not in NORMS or not eps:
            raise InputError(f"{label!r} is not a threat label such as 'linf_8_255' or 'l2_0.5'")
        return cls(norm, parse_eps(eps.replace("_", "/")))

    def ball(self) -> ThreatModel:
        """The set of allowed perturbations, which attacks step and project in."""
        return (LinfThreat if self.norm == "linf" else L2Threat)(self.eps)

    def __str__(self) -> str:
        k = self.eps * 255
        if self.norm == "linf" and abs(k - round(k)) < 1e-6:
            return f"L-inf {round(k)}/255"
        return f"{'L-inf' if self.norm == 'linf' else 'L2'} {self.eps:g}"
