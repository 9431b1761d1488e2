"""Confusion counts that sum across batches and processes, and the one definition of each accuracy derived from them.

Every accuracy medrobust reports (``val/*``, ``test/*``, under attack, under shift, the clean error of rBE) comes
from these counts, so one definition holds everywhere:

* accuracy: top-1 for single-label tasks; the mean over labels of per-label accuracy for multi-label ones (MedMNIST's
  evaluator);
* balanced accuracy: scikit-learn's ``balanced_accuracy_score``, the mean recall over the classes that occur in the
  labels (a class that is only predicted is skipped, not counted as recall 0). Multi-label: that same score on each
  label's binary problem, averaged over labels, so a label with no positives is scored by its specificity alone
  instead of counting a sensitivity of 0.
"""

from __future__ import annotations

import torch


def predictions(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class indices ``(N,)`` (argmax) for single-label tasks; 0/1 per label ``(N, L)`` (logit > 0) for multi-label."""
    return (logits > 0).long() if task == "multilabel" else logits.argmax(1)


def empty_counts(task: str, num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Zero confusion counts of the shape :func:`confusion_counts` returns for ``task``."""
    shape = (num_classes, 2, 2) if task == "multilabel" else (num_classes, num_classes)
    return torch.zeros(shape, dtype=torch.long, device=device)


def confusion_from_predictions(pred: torch.Tensor, y: torch.Tensor, task: str, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts (rows: true class) for single-label tasks; ``(L, 2, 2)`` per label for multi-label ones."""
    if task == "multilabel":
        index = 2 * y.long() + pred.long()  # (N, L) in 0..3
        counts = torch.zeros(num_classes, 4, dtype=torch.long, device=pred.device)
        counts.scatter_add_(1, index.T, torch.ones_like(index.T))
        return counts.view(num_classes, 2, 2)
    index = y.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_counts(logits: torch.Tensor, y: torch.Tensor, task: str, num_classes: int) -> torch.Tensor:
    """Confusion counts of ``logits`` against ``y``; see :func:`confusion_from_predictions`."""
    return confusion_from_predictions(predictions(logits, task), y, task, num_classes)


def errors(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Per sample, how many of its labels are wrong: 0 or 1 for single-label tasks, 0..L for multi-label ones."""
    wrong = predictions(logits, task) != y.long()
    return wrong.sum(1) if task == "multilabel" else wrong.long()


def worst_case_predictions(preds: list[torch.Tensor], y: torch.Tensor, task: str) -> torch.Tensor:
    """Per sample, the prediction of the worst of several evaluations of the same samples (clean, each attack).

    A sample (for multi-label tasks: a sample's label) counts as correct only if every evaluation got it right; where
    one did not, the first wrong prediction is kept, so confusion counts of the result give worst-case accuracies.
    """
    stacked = torch.stack([p.long() for p in preds])  # (S, N) or (S, N, L)
    wrong = stacked != y.long()
    first_wrong = wrong.long().argmax(0, keepdim=True)
    return torch.where(wrong.any(0), stacked.gather(0, first_wrong).squeeze(0), y.long())


def _mean_recall(counts: torch.Tensor) -> torch.Tensor:
    """Mean over the last-but-one axis's classes that occur (row sum > 0) of diagonal / row sum."""
    support = counts.sum(-1)
    present = support > 0
    recall = counts.diagonal(dim1=-2, dim2=-1) / support.clamp_min(1)
    return (recall * present).sum(-1) / present.sum(-1).clamp_min(1)


def balanced_accuracy(counts: torch.Tensor) -> torch.Tensor:
    """scikit-learn's balanced accuracy from ``(C, C)`` counts; for ``(L, 2, 2)``, its mean over labels that occur."""
    if counts.ndim == 3:
        occurs = counts.sum((1, 2)) > 0
        return _mean_recall(counts.double())[occurs].mean().float()
    return _mean_recall(counts.double()).float()


def accuracy(counts: torch.Tensor) -> float:
    """Top-1 accuracy from ``(C, C)`` counts; mean per-label accuracy from ``(L, 2, 2)``."""
    if counts.ndim == 3:
        return float((counts.diagonal(dim1=1, dim2=2).sum(1) / counts.sum((1, 2)).clamp_min(1)).mean())
    return float(counts.diagonal().sum() / counts.sum().clamp_min(1))


#: a classifier whose most predicted class gets at least this share of its predictions is near-constant: its accuracy
#: measures the class balance of the test set. One threshold for the test warning, the evaluations and the reports.
CONSTANT_SHARE = 0.95


def top_prediction_share(counts: torch.Tensor) -> float:
    """The share of predictions that go to the most predicted class (for ``(L, 2, 2)``: the mean over labels of the
    share of the more predicted value). 1.0 is a constant classifier."""
    if counts.ndim == 3:
        predicted = counts.sum(1).double()  # (L, 2): how often each label is predicted 0 and 1
        return float((predicted.amax(1) / predicted.sum(1).clamp_min(1)).mean())
    predicted = counts.sum(0).double()
    return float(predicted.max() / predicted.sum().clamp_min(1))


def near_constant(counts: torch.Tensor, threshold: float = CONSTANT_SHARE) -> bool:
    """Whether a single-label classifier gives one class at least ``threshold`` of its predictions, and a larger
    share than that same class has among the labels (so a model that predicts a 96% majority class 96% of the time is
    not flagged, and one that predicts it always is). Never for multi-label counts ``(L, 2, 2)``: there a label's
    majority value is mostly its prevalence (ChestMNIST's findings are rare), not a collapsed model."""
    if counts.ndim == 3:
        return False
    share = top_prediction_share(counts)
    labels = counts.sum(1).double()
    top = int(counts.sum(0).argmax())  # the most predicted class: compared with its own share of the labels
    label_share = float(labels[top] / labels.sum().clamp_min(1))
    return share >= threshold and share > label_share + 1e-9
