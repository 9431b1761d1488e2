"""The task loss, chosen in one place: cross-entropy for single-label tasks, BCE with logits for multi-label ones."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def task_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    task: str = "multiclass",
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy (``y`` class indices, or per-class probabilities ``(N, C)``: soft labels) or, for
    ``task="multilabel"``, BCE with logits (``y`` 0/1, or a probability, per label).

    ``weight`` is the per-class weight of cross-entropy, or the per-label ``pos_weight`` of BCE.
    """
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction=reduction, pos_weight=weight)
    if weight is not None and y.is_floating_point() and reduction == "mean":
        # PyTorch divides a weighted soft-label mean by N, a hard-label one by the sum of the targets' weights: the
        # same normalisation as for class indices, so MixUp does not rescale a class-weighted loss
        per_sample = -(y * weight * F.log_softmax(logits, dim=1)).sum(1)
        return per_sample.sum() / (y * weight).sum().clamp_min(1e-12)
    return F.cross_entropy(logits, y, weight=weight, reduction=reduction)


def attack_loss(task: str) -> LossFn:
    """The loss an attack ascends for ``task``: the task loss, summed so every sample's gradient has unit scale."""
    return partial(task_loss, task=task, reduction="sum")


cross_entropy_sum: LossFn = attack_loss("multiclass")


def kl_sum(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """TRADES' inner loss: KL(f(x) || f(x')) with ``clean_probs = softmax(f(x))``, summed over the batch."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="sum")
