"""An in-memory image dataset that serves whole batches in one indexing operation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medrobust.utilities.errors import InputError


class TensorImageDataset(Dataset):
    """uint8 images held in memory, served as float in [0, 1].

    ``__getitems__`` lets ``DataLoader`` fetch a batch with one tensor index instead of ``batch_size`` Python calls
    and a ``default_collate``; pair it with :func:`identity_collate`.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)`` for single-label tasks, float ``(N, L)`` for multi-label ones.
        groups: optional int64 ``(N,)`` group labels (e.g. carries a shortcut feature or not); batches are then
            ``(x, y, groups)``.
        masks: optional uint8 ``(N, H, W)`` binary evidence masks (where the label's evidence is: an injected pattern,
            a shortcut marker, a user's annotation). They stay with the samples through ``subset`` but are not part
            of the batches; :class:`~medrobust.callbacks.SaliencyEvaluation` reads them by index.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise InputError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        if groups is not None and len(groups) != len(labels):
            raise InputError(f"{len(groups)} group labels for {len(labels)} samples")
        if masks is not None and (masks.shape != (len(images), *images.shape[2:]) or masks.dtype != torch.uint8):
            raise InputError(
                f"masks must be uint8 (N, H, W) = {(len(images), *images.shape[2:])}, got {masks.dtype} "
                f"{tuple(masks.shape)}"
            )
        self.images = images
        self.labels = labels
        self.groups = groups
        self.masks = masks

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, multilabel: bool) -> TensorImageDataset:
        """From MedMNIST arrays: images ``(N, H, W)`` or ``(N, H, W, C)``, labels ``(N, L)``."""
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        y = torch.from_numpy(labels.astype(np.float32 if multilabel else np.int64))
        return cls(x.contiguous(), y if multilabel else y.reshape(-1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        sample = self.images[index].float().div_(255), self.labels[index]
        return sample if self.groups is None else (*sample, self.groups[index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = self.images[index].float().div_(255), self.labels[index]
        return batch if self.groups is None else (*batch, self.groups[index])

    def subset(self, indices: torch.Tensor) -> TensorImageDataset:
        groups = None if self.groups is None else self.groups[indices]
        masks = None if self.masks is None else self.masks[indices]
        return TensorImageDataset(self.images[indices], self.labels[indices], groups, masks)


def identity_collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch from ``__getitems__`` is already collated (module-level so worker processes can pickle it)."""
    return batch
