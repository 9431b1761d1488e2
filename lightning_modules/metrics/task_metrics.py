"""Task-aware classification metrics as torchmetrics ``Metric`` objects, all updated with ``(logits, y)``.

Accuracy and balanced accuracy are computed from summed confusion counts (:mod:`.confusion`), the same definition
every callback uses; AUROC is torchmetrics', fed the probabilities.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAUROC, MultilabelAUROC

from medrobust.lightning_modules.metrics.confusion import accuracy, balanced_accuracy, confusion_counts, empty_counts
from medrobust.utilities.errors import InputError

TASKS = ("multiclass", "multilabel")


class ConfusionCounts(Metric):
    """Summed confusion counts: ``(C, C)`` for single-label tasks, ``(L, 2, 2)`` for multi-label ones.

    States are summed across processes, so a process that saw no batch contributes zeros and still takes part in
    the reduction.
    """

    full_state_update = False

    def __init__(self, task: str, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        _check_task(task)
        self.task, self.num_classes = task, num_classes
        self.add_state("counts", empty_counts(task, num_classes), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.counts += confusion_counts(logits, y, self.task, self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.counts


class Accuracy(ConfusionCounts):
    """Top-1 accuracy; mean per-label accuracy for multi-label tasks."""

    def compute(self) -> torch.Tensor:
        return torch.tensor(accuracy(self.counts))


class BalancedAccuracy(ConfusionCounts):
    """scikit-learn's balanced accuracy (classes absent from the labels skipped); per label for multi-label tasks."""

    def compute(self) -> torch.Tensor:
        return balanced_accuracy(self.counts)


class AUROC(Metric):
    """Macro AUROC from logits: softmax (single-label) or sigmoid (multi-label), then torchmetrics' AUROC."""

    full_state_update = False

    def __init__(self, task: str, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        _check_task(task)
        self.task = task
        self.auroc = (
            MulticlassAUROC(num_classes, average="macro")
            if task == "multiclass"
            else MultilabelAUROC(num_classes, average="macro")
        )

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.auroc.update(scores(self.task, logits), y.long())

    def compute(self) -> torch.Tensor:
        return self.auroc.compute()

    def reset(self) -> None:
        super().reset()
        self.auroc.reset()


def classification_metrics(task: str, num_classes: int, full: bool = True) -> MetricCollection:
    """``acc`` always; ``bal_acc`` and ``auroc`` when ``full`` (AUROC keeps every score, so it costs memory)."""
    metrics: dict[str, Metric] = {"acc": Accuracy(task, num_classes)}
    if full:
        metrics["bal_acc"] = BalancedAccuracy(task, num_classes)
        metrics["auroc"] = AUROC(task, num_classes)
    return MetricCollection(metrics, compute_groups=False)


def scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities: softmax for single-label tasks, sigmoid for multi-label ones."""
    return logits.softmax(-1) if task == "multiclass" else logits.sigmoid()


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"Unknown task {task!r}; valid: {TASKS}")
