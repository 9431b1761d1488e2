"""A robustness budget as one value: a norm and a radius in pixel units, from the config to the metric name.

``Threat.parse("linf", "8/255")`` is how a config's budget becomes a number (no ``eval``); ``threat.label`` is how it
is written into metric names (``linf_8_255``) and ``Threat.from_label`` reads it back; ``threat.ball()`` is the
set of allowed perturbations that attacks step and project in. Callbacks, attacks, the report and the studies use
this one value, so a budget is never spelled two ways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medrobust.lightning_modules.attacks.threat_model import L2Threat, LinfThreat, ThreatModel, parse_eps
from medrobust.utilities.errors import InputError

NORMS = ("linf", "l2")
#: the largest L-inf budget taken without ``allow_unusual_budget``: 64 grey levels, far beyond any used in the field
MAX_LINF = 64 / 255
__all__ = ["MAX_LINF", "NORMS", "Threat", "check_budget", "parse_eps"]


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


def check_budget(threat: Threat, written: object, image_shape: tuple[int, ...] | None = None) -> None:
    """Refuse a budget a user most likely did not mean, naming the value it parsed to: an L-inf budget that is not a
    whole number of grey levels (``8/2555`` is 0.8/255) or above :data:`MAX_LINF`; an L2 budget longer than the
    diameter of the image cube ``sqrt(C*H*W)`` (when ``image_shape`` is known), which no perturbation needs. A budget
    of 0 is standard training or evaluation and always taken. Callbacks take ``allow_unusual_budget`` to skip this."""
    if threat.eps == 0:
        return
    value = f"{written!r} parses to {threat.eps:.6g}"
    hint = "set allow_unusual_budget: true on the callback to use it as it is"
    if threat.norm == "linf":
        k = threat.eps * 255
        if abs(k - round(k)) > 1e-6:
            raise InputError(
                f"L-inf budget {value} = {k:.4g}/255, not a whole number of grey levels: write k/255 (e.g. "
                f"'{max(1, round(k))}/255'), or {hint}"
            )
        if threat.eps > MAX_LINF + 1e-9:
            raise InputError(f"L-inf budget {value} = {round(k)}/255, above {round(MAX_LINF * 255)}/255; or {hint}")
    elif image_shape is not None:
        diameter = math.sqrt(math.prod(image_shape))
        if threat.eps > diameter:
            raise InputError(
                f"L2 budget {value}, longer than the diagonal of a {'x'.join(map(str, image_shape))} image in [0, 1] "
                f"({diameter:.4g}): every image is within it; or {hint}"
            )
