"""Confusion counts that sum across batches and processes, and the accuracies derived from them."""

from __future__ import annotations

import torch


def confusion_counts(logits: torch.Tensor, y: torch.Tensor, task: str, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts (rows: true class) for single-label tasks; ``(L, 2, 2)`` per label for multi-label ones."""
    if task == "multilabel":
        pred = (logits > 0).long()
        index = 2 * y.long() + pred  # (N, L) in 0..3
        counts = torch.zeros(num_classes, 4, dtype=torch.long, device=logits.device)
        counts.scatter_add_(1, index.T, torch.ones_like(index.T))
        return counts.view(num_classes, 2, 2)
    pred = logits.argmax(1)
    index = y.long() * num_classes + pred
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def balanced_accuracy(counts: torch.Tensor) -> torch.Tensor:
    """Mean recall over the classes present; for ``(L, 2, 2)``, the mean over labels of (TPR + TNR) / 2."""
    if counts.ndim == 3:
        recall = counts.diagonal(dim1=1, dim2=2) / counts.sum(2).clamp_min(1)  # (L, 2): TNR, TPR
        return recall.mean()
    support = counts.sum(1)
    recall = counts.diagonal()[support > 0] / support[support > 0]
    return recall.float().mean()


def accuracy(counts: torch.Tensor) -> float:
    """Top-1 accuracy from ``(C, C)`` counts; mean per-label accuracy from ``(L, 2, 2)``."""
    if counts.ndim == 3:
        return float((counts.diagonal(dim1=1, dim2=2).sum(1) / counts.sum((1, 2)).clamp_min(1)).mean())
    return float(counts.diagonal().sum() / counts.sum().clamp_min(1))
