"""Task-aware classification metrics: accuracy, balanced accuracy and AUROC."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelConfusionMatrix,
    MultilabelStatScores,
)

TASKS = ("multiclass", "multilabel")


class MultilabelBalancedAccuracy(MultilabelStatScores):
    """Mean over labels of (sensitivity + specificity) / 2."""

    def __init__(self, num_labels: int, **kwargs: object) -> None:
        super().__init__(num_labels=num_labels, average=None, **kwargs)

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = (state.float() for state in self._final_state())
        sensitivity = tp / (tp + fn).clamp_min(1)
        specificity = tn / (tn + fp).clamp_min(1)
        return ((sensitivity + specificity) / 2).mean()


def classification_metrics(task: str, num_classes: int, full: bool = True) -> MetricCollection:
    """``acc`` always; ``bal_acc`` and ``auroc`` when ``full`` (they cost more: AUROC keeps every score).

    ``acc`` follows MedMNIST's evaluator: top-1 for single-label tasks, mean per-label accuracy at 0.5 for multi-label.
    """
    _check_task(task)
    metrics: dict[str, Metric]
    if task == "multiclass":
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if full:
            metrics["bal_acc"] = MulticlassAccuracy(num_classes, average="macro")
            metrics["auroc"] = MulticlassAUROC(num_classes, average="macro")
    else:
        metrics = {"acc": MultilabelAccuracy(num_classes, average="macro")}
        if full:
            metrics["bal_acc"] = MultilabelBalancedAccuracy(num_classes)
            metrics["auroc"] = MultilabelAUROC(num_classes, average="macro")
    return MetricCollection(metrics)


def confusion_matrix(task: str, num_classes: int) -> Metric:
    """``(C, C)`` for single-label tasks, ``(L, 2, 2)`` for multi-label ones."""
    _check_task(task)
    if task == "multiclass":
        return MulticlassConfusionMatrix(num_classes)
    return MultilabelConfusionMatrix(num_classes)


def scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities the metrics take: softmax for single-label, sigmoid for multi-label."""
    return logits.softmax(-1) if task == "multiclass" else logits.sigmoid()


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; valid: {TASKS}")
