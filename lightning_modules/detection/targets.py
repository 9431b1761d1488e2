"""What a detector is tested against: test splits the datamodule serves, or adversarial versions of the
in-distribution test images made on the fly."""

from __future__ import annotations

from dataclasses import dataclass

from medrobust.lightning_modules.attacks.threat import Threat, parse_eps
from medrobust.utilities.errors import InputError

ATTACK_KINDS = ("fgsm", "pgd", "adaptive")
FORMS = "'ood:<flag>', 'corruption:<name>@<1..5>', 'fgsm:<eps>', 'pgd:<eps>', 'adaptive:<eps>' (L-inf, e.g. 8/255)"


@dataclass(frozen=True)
class Target:
    """One detection target.

    Attributes:
        spec: as written (``ood:breastmnist``, ``corruption:gaussian_noise@5``, ``pgd:8/255``).
        kind: ``"split"`` or an attack of :data:`ATTACK_KINDS`.
        split: the datamodule's test split of a ``"split"`` target (``ood/breastmnist``,
            ``shift/gaussian_noise/s5``).
        eps: the L-inf budget of an attack, in pixel units.
        steps: PGD steps of ``pgd`` and ``adaptive``.
    """

    spec: str
    kind: str
    split: str | None = None
    eps: float = 0.0
    steps: int = 0

    @property
    def label(self) -> str:
        """Metric-name part: ``ood_breastmnist``, ``gaussian_noise_s5``, ``pgd20_linf_8_255``, ``fgsm_linf_2_255``."""
        if self.kind == "split":
            return self.split.removeprefix("shift/").replace("/", "_")
        name = self.kind if self.kind == "fgsm" else f"{self.kind}{self.steps}"
        return f"{name}_{Threat('linf', self.eps).label}"

    @property
    def adversarial(self) -> bool:
        return self.kind in ATTACK_KINDS


def parse_target(spec: str, steps: int = 20) -> Target:
    """One target spec; anything else raises, listing the valid forms."""
    kind, _, arg = str(spec).partition(":")
    if kind == "ood" and arg:
        return Target(spec, "split", split=f"ood/{arg}")
    if kind == "corruption" and arg:
        name, _, severity = arg.partition("@")
        if not severity.isdigit() or not 1 <= int(severity) <= 5:
            raise InputError(f"Detection target {spec!r} needs a severity 1..5, as in 'corruption:{name}@5'")
        return Target(spec, "split", split=f"shift/{name}/s{int(severity)}")
    if kind in ATTACK_KINDS and arg:
        try:
            eps = parse_eps(arg)
        except (InputError, ValueError) as err:
            raise InputError(f"Detection target {spec!r}: {err}") from None
        if eps <= 0:
            raise InputError(f"Detection target {spec!r} needs a budget > 0")
        return Target(spec, kind, eps=eps, steps=0 if kind == "fgsm" else steps)
    raise InputError(f"Unknown detection target {spec!r}. Valid: {FORMS}")


def parse_targets(specs: list[str], steps: int = 20) -> list[Target]:
    """Parse ``specs``, refusing an empty list and duplicates."""
    if not specs:
        raise InputError(f"DetectionEvaluation needs at least one target: {FORMS}")
    targets = [parse_target(spec, steps) for spec in specs]
    labels = [t.label for t in targets]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise InputError(f"Detection targets listed twice: {twice}")
    return targets
