"""Helpers of the evaluation callbacks: rows gathered from every process, and AUROC from gathered scores."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from torchmetrics.functional.classification import multiclass_auroc, multilabel_auroc


def gather_rows(trainer: Trainer, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """All ranks' rows, concatenated (ranks may hold different counts: pad, gather, trim)."""
    if trainer.world_size == 1:
        return rows
    n = torch.tensor([len(rows)], device=device)
    sizes = trainer.strategy.all_gather(n).flatten().tolist()
    padded = torch.zeros((max(sizes), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: len(rows)] = rows.to(device)
    gathered = trainer.strategy.all_gather(padded)
    return torch.cat([gathered[i, :size] for i, size in enumerate(sizes)]).cpu()


def auroc(scores: torch.Tensor, labels: torch.Tensor, task: str, num_classes: int) -> float:
    """Macro AUROC over classes (labels for multi-label tasks); for two classes, the positive class's AUC."""
    if task == "multilabel":
        return float(multilabel_auroc(scores, labels.long(), num_labels=num_classes))
    return float(multiclass_auroc(scores, labels.long(), num_classes=num_classes))
