"""The attacks a robustness report runs: FGSM, PGD and AutoAttack, chosen per task and class count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lightning_modules.components.frozen_mode import attack_mode
from lightning_modules.components.pgd import PGD, bce_sum, cross_entropy_sum
from lightning_modules.components.threat_model import eps_label, threat_model

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ATTACKS = ("fgsm", "pgd", "autoattack", "square")


@dataclass(frozen=True)
class AttackSpec:
    """One point of a robustness curve: an attack at a norm and budget."""

    attack: str
    norm: str
    eps: float
    steps: int = 0

    @property
    def label(self) -> str:
        """``pgd20/linf_8_255``: used in metric names and the report."""
        name = f"{self.attack}{self.steps}" if self.attack == "pgd" else self.attack
        return f"{name}/{self.norm}_{eps_label(self.eps)}"


def autoattack_components(num_classes: int) -> list[str]:
    """AutoAttack's standard suite where the class count allows it.

    DLR losses need 3+ classes and targeted DLR needs a runner-up besides the target, so 4+; a binary task gets
    APGD-CE, untargeted FAB and Square, which are all sound with two logits.
    """
    if num_classes >= 4:
        return ["apgd-ce", "apgd-t", "fab-t", "square"]
    if num_classes == 3:
        return ["apgd-ce", "apgd-dlr", "fab", "square"]
    return ["apgd-ce", "fab", "square"]


def build_attack(
    spec: AttackSpec,
    task: str,
    num_classes: int,
    restarts: int = 1,
    autoattack_steps: int = 100,
    square_queries: int = 5000,
    seed: int = 0,
) -> AttackFn:
    """A function ``(net, x, y) -> x_adv`` for ``spec``.

    FGSM and PGD are ours (:class:`PGD`; cross-entropy, or BCE for multi-label). AutoAttack and Square are
    torchattacks' ports of Croce & Hein's code, built here with the original step counts (torchattacks' own
    ``AutoAttack`` runs APGD for 10 steps, not 100) and constructed at call time on the batch's device.
    """
    loss_fn = bce_sum if task == "multilabel" else cross_entropy_sum
    threat = threat_model(spec.norm, spec.eps)
    if spec.attack == "fgsm":
        pgd = PGD(threat, steps=1, alpha=spec.eps, random_start=False, loss_fn=loss_fn)
        return lambda net, x, y: pgd.perturb(net, x, y)
    if spec.attack == "pgd":
        # One restart starts at x: deterministic and independent of how samples are batched (or split over
        # processes). Several restarts need random starts.
        pgd = PGD(threat, steps=spec.steps, restarts=restarts, random_start=restarts > 1, loss_fn=loss_fn)
        return lambda net, x, y: pgd.perturb(net, x, y)
    if task == "multilabel":
        raise ValueError(f"{spec.attack} assumes a softmax classifier; multi-label tasks get fgsm and pgd only")
    if spec.attack not in ("autoattack", "square"):
        raise ValueError(f"Unknown attack {spec.attack!r}; valid: {ATTACKS}")
    components = autoattack_components(num_classes) if spec.attack == "autoattack" else ["square"]

    def run(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        norm = {"linf": "Linf", "l2": "L2"}[spec.norm]
        common = {"norm": norm, "eps": spec.eps, "seed": seed}
        make = {
            "apgd-ce": lambda: torchattacks.APGD(net, loss="ce", steps=autoattack_steps, **common),
            "apgd-dlr": lambda: torchattacks.APGD(net, loss="dlr", steps=autoattack_steps, **common),
            "apgd-t": lambda: torchattacks.APGDT(net, steps=autoattack_steps, n_classes=num_classes, **common),
            "fab": lambda: torchattacks.FAB(net, steps=autoattack_steps, n_classes=num_classes, **common),
            "fab-t": lambda: torchattacks.FAB(
                net, steps=autoattack_steps, n_classes=num_classes, multi_targeted=True, **common
            ),
            "square": lambda: torchattacks.Square(net, n_queries=square_queries, **common),
        }
        with attack_mode(net):
            attacks = [make[name]() for name in components]
            attack = attacks[0] if len(attacks) == 1 else torchattacks.MultiAttack(attacks)
            x_adv = attack(x.detach().clone(), y.detach().clone())
        return threat.project(x_adv.detach(), x)  # guard against any numerical overshoot of the budget

    return run
