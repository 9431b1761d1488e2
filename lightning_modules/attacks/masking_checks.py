"""Gradient-masking checks in the spirit of AutoAttack's: signs that a robust accuracy is overestimated.

Each check counts per sample (:func:`white_box_tallies`, :func:`black_box_tallies`), so the counts of any number of
batches and processes add up, and :func:`masking_verdict` judges the sums. The white-box tallies on a global sample
of test images are the same however the sample was batched or sharded; so are the black-box check's PGD starts
(drawn per image from its dataset id), but torchattacks' Square draws per batch, so its accuracy can differ by a few
samples between process counts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrobust.lightning_modules.attacks.attack_suite import AttackSpec, build_attack
from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.losses import attack_loss
from medrobust.lightning_modules.metrics.confusion import errors
from medrobust.lightning_modules.nets.modes import attack_mode, eval_mode

WHITE_BOX = ("n", "probability_rows", "nondeterministic", "zero_input_grad")
BLACK_BOX = ("black_box_n", "black_box_square_correct", "black_box_pgd_correct")
TALLIES = WHITE_BOX + BLACK_BOX
BLACK_BOX_MARGIN = 0.05  # Square may beat PGD by this much accuracy before the check fails


def white_box_tallies(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> dict[str, float]:
    """Per-sample counts over a batch: rows that look like probabilities (in [0, 1], summing to 1), samples whose
    output changes on a second forward pass, samples whose input gradient is exactly zero."""
    with attack_mode(net):
        x = x.clone().requires_grad_(True)
        out = net(x)
        (grad,) = torch.autograd.grad(attack_loss(task)(out, y), x)
        out = out.detach().float()
    with eval_mode(net):
        again = net(x).detach().float()
    in_unit = ((out >= 0) & (out <= 1)).all(1)
    probability_rows = in_unit & ((out.sum(1) - 1).abs() <= 1e-4)
    nondeterministic = ~torch.isclose(out, again, atol=1e-5).all(1)
    zero_grad = grad.flatten(1).abs().amax(1) == 0
    return {
        "n": float(len(x)),
        "probability_rows": float(probability_rows.sum()),
        "nondeterministic": float(nondeterministic.sum()),
        "zero_input_grad": float(zero_grad.sum()),
    }


def black_box_tallies(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    eps: float,
    pgd_steps: int,
    queries: int,
    seed: int,
    ids: torch.Tensor | None = None,
) -> dict[str, float]:
    """Samples classified correctly under a black-box Square attack and under white-box PGD, at L-inf ``eps``
    (``ids``: the samples' dataset ids, which seed PGD's random starts per image)."""
    correct = {}
    for spec in (AttackSpec("pgd", Threat("linf", eps), pgd_steps), AttackSpec("square", Threat("linf", eps))):
        x_adv = build_attack(spec, "multiclass", num_classes, square_queries=queries, seed=seed)(net, x, y, ids)
        with eval_mode(net):
            correct[spec.attack] = float((~errors(net(x_adv), y, "multiclass")).sum())
    return {
        "black_box_n": float(len(x)),
        "black_box_square_correct": correct["square"],
        "black_box_pgd_correct": correct["pgd"],
    }


def masking_verdict(tallies: dict[str, float]) -> dict[str, Any]:
    """The checks from summed tallies: outputs are logits (not every row a probability vector), the model is
    deterministic, 99% of input gradients are non-zero, and Square does not beat PGD by more than 5 points of
    accuracy; with the number of samples each was judged on. Checks with no samples are left out."""
    verdict: dict[str, Any] = {}
    n = int(tallies.get("n", 0))
    if n:
        nonzero = 1 - tallies["zero_input_grad"] / n
        verdict |= {
            "n": n,
            "outputs_are_logits": tallies["probability_rows"] < n,
            "deterministic": tallies["nondeterministic"] == 0,
            "nonzero_input_grad": nonzero >= 0.99,
            "nonzero_input_grad_fraction": nonzero,
        }
    n_black = int(tallies.get("black_box_n", 0))
    if n_black:
        square = tallies["black_box_square_correct"] / n_black
        pgd = tallies["black_box_pgd_correct"] / n_black
        verdict |= {
            "black_box_n": n_black,
            "black_box_not_better": square >= pgd - BLACK_BOX_MARGIN,
            "black_box_square_acc": square,
            "black_box_pgd_acc": pgd,
        }
    return verdict
