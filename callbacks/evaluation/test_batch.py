"""TestBatch: one test batch as an evaluation callback receives it, with its split and its samples' global ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TestBatch:
    """One batch of one test split.

    Attributes:
        split: the test split's name (``id`` first, then the datamodule's shifted splits).
        x: the images, float in [0, 1].
        y: the labels.
        extra: the batch's further fields (a shortcut split's group labels).
        ids: the global dataset index of every sample (the same on 1 or N processes); a sample budget of the first
            ``N`` samples admits ``within(ids, N)`` leading samples; ``None`` where the loader shuffles.
        outputs: what the module's ``test_step`` returned (its logits).
        index: the batch's index within its loader on this process.
    """

    __test__ = False  # not a pytest test class

    split: str
    x: torch.Tensor
    y: torch.Tensor
    extra: tuple[Any, ...]
    ids: torch.Tensor | None
    outputs: Any
    index: int
