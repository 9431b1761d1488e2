"""The attacks a robustness report runs: FGSM, PGD and AutoAttack, chosen per task and class count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.attacks.threat_model import seeded_starts
from medrobust.lightning_modules.losses import attack_loss
from medrobust.lightning_modules.nets.modes import attack_mode
from medrobust.utilities.errors import InputError

#: ``(net, x, y, ids) -> x_adv``; ``ids`` are the samples' global dataset ids (or None), which seed random starts
AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
ATTACKS = ("fgsm", "pgd", "autoattack", "square")
#: the attacks that assume a softmax classifier (torchattacks' ports: cross-entropy and DLR losses)
SOFTMAX_ONLY = ("autoattack", "square")


def default_attacks(task: str) -> list[str]:
    """The attacks a robustness report runs when none are named: AutoAttack too where the task allows it."""
    return ["fgsm", "pgd"] if task == "multilabel" else ["fgsm", "pgd", "autoattack"]


def check_attacks(attacks: list[str], task: str) -> None:
    """Refuse unknown attacks, and softmax-only attacks on a multi-label task, with the valid choices."""
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"Unknown attacks {unknown}; valid: {list(ATTACKS)}")
    if task == "multilabel" and any(a in SOFTMAX_ONLY for a in attacks):
        raise InputError(
            f"{[a for a in attacks if a in SOFTMAX_ONLY]} assume a softmax classifier; a multi-label task can be "
            "attacked with fgsm and pgd (BCE loss). Leave `attacks` unset to get them."
        )


@dataclass(frozen=True)
class AttackSpec:
    """One point of a robustness curve: an attack at a threat (norm and budget)."""

    attack: str
    threat: Threat
    steps: int = 0
    restarts: int = 1

    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def name(self) -> str:
        """``fgsm``, ``pgd20``, ``pgd20_r5`` (20 steps, 5 restarts), ``autoattack``."""
        if self.attack != "pgd":
            return self.attack
        return f"pgd{self.steps}" + (f"_r{self.restarts}" if self.restarts > 1 else "")

    @property
    def label(self) -> str:
        """``pgd20/linf_8_255``: used in metric names and the report."""
        return f"{self.name}/{self.threat.label}"


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
    autoattack_steps: int = 100,
    square_queries: int = 5000,
    seed: int = 0,
    random_start: bool = True,
) -> AttackFn:
    """A function ``(net, x, y, ids) -> x_adv`` for ``spec``.

    FGSM and PGD are ours (:class:`PGD`; cross-entropy, or BCE for multi-label), and keep per sample the first
    iterate that fools the model, not the last. PGD starts from a random point of the ball (``random_start``; Madry
    et al.'s evaluation): one drawn per image from ``seed`` and its global dataset id ``ids``, so an image gets the same
    start however the split is batched or shared among processes (without ids: torch's global generator). FGSM
    starts at ``x``. Further restarts (``spec.restarts``) draw from torch's generator, which the evaluation seeds per
    batch: with restarts, numbers depend on the batching. AutoAttack and Square are
    torchattacks' ports of Croce & Hein's code, built here with the original step counts (torchattacks' own
    ``AutoAttack`` runs APGD for 10 steps, not 100) and constructed at call time on the batch's device; they run in
    full precision even inside a bf16 autocast context (their buffers are fp32).
    """
    check_attacks([spec.attack], task)
    loss_fn = attack_loss(task)
    threat = spec.threat.ball()
    if spec.attack == "fgsm":
        fgsm = PGD(threat, 1, alpha=spec.eps, random_start=False, loss_fn=loss_fn, task=task, keep_first_success=True)
        return lambda net, x, y, ids=None: fgsm.perturb(net, x, y)
    if spec.attack == "pgd":
        random = random_start or spec.restarts > 1
        pgd = PGD(
            threat,
            spec.steps,
            restarts=spec.restarts,
            random_start=random,
            loss_fn=loss_fn,
            task=task,
            keep_first_success=True,
        )

        def run_pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
            if not random_start:  # the first run from the image; further restarts are random
                return pgd.perturb(net, x, y, x_init=x)
            return pgd.perturb(net, x, y, x_init=seeded_starts(threat, x, ids, seed) if ids is not None else None)

        return run_pgd
    components = autoattack_components(num_classes) if spec.attack == "autoattack" else ["square"]

    def run(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
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
        # torchattacks' ports index bf16 logits into fp32 buffers: they run in full precision, outside any autocast
        with attack_mode(net), torch.autocast(x.device.type, enabled=False):
            attacks = [make[name]() for name in components]
            attack = attacks[0] if len(attacks) == 1 else torchattacks.MultiAttack(attacks)
            x_adv = attack(x.detach().clone(), y.detach().clone())
        return threat.project(x_adv.detach(), x)  # guard against any numerical overshoot of the budget

    return run
