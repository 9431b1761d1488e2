"""A trained network as a model outside this framework: float images in [0, 1] in, class probabilities out, exported
with ``torch.export``: a traced graph and raw weights, not a pickled module, that loads without medrobust."""

from __future__ import annotations

import torch
from torch import nn

from medrobust.lightning_modules.metrics.task_metrics import scores


class ImageProbabilities(nn.Module):
    """``scores(task, net(x))``: softmax over classes (single-label tasks) or a sigmoid per label (multi-label), for
    images ``(N, C, H, W)`` in [0, 1]. The normalisation and the small-input stem are the network's own.

    Args:
        net: a classifier returning logits (a :class:`NormalizedClassifier`).
        task: ``"multiclass"`` or ``"multilabel"``.
    """

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net = net
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scores(self.task, self.net(x))

    def export(self, in_chans: int, size: int) -> torch.export.ExportedProgram:
        """The module as a ``torch.export`` program for ``(N, in_chans, size, size)`` float32 images, N dynamic
        (1 included), in eval mode on the CPU; save it with ``torch.export.save``."""
        self.eval()
        example = torch.rand(2, in_chans, size, size)
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        return torch.export.export(self, (example,), dynamic_shapes=({0: batch},))
