"""One global sample budget: which dataset samples a batch holds, so that a cap of ``N`` samples means the first
``N`` samples of the split by index, the same images on 1 or N processes.

Evaluation loaders read each split in order, split across processes without padding
(:class:`~lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler`, ``shuffle=False``): process ``r`` of
``W`` holds samples ``r, r + W, r + 2W, ...``. :class:`SampleIds` reads that order from the loader's own sampler and
hands each batch its global ids; :func:`within` is how many leading samples of a batch a budget admits. A cap of
``N`` per process (each process's first ``N``) would test ``W * N`` samples on ``W`` processes, and other ones.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DistributedSampler, SequentialSampler

from medrobust.utilities.errors import InputError


def _loader(trainer: Trainer, stage: str, dataloader_idx: int) -> Any:
    loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    if isinstance(loaders, list | tuple):
        return loaders[dataloader_idx]
    if isinstance(loaders, dict):
        return list(loaders.values())[dataloader_idx]
    return loaders


class SampleIds:
    """The global dataset index of every sample an evaluation pass sees, per loader; :meth:`reset` at each epoch."""

    def __init__(self) -> None:
        self._order: dict[tuple[str, int], torch.Tensor | None] = {}
        self._position: dict[tuple[str, int], int] = {}

    def reset(self) -> None:
        self._order, self._position = {}, {}

    def take(self, trainer: Trainer, stage: str, dataloader_idx: int, count: int) -> torch.Tensor | None:
        """The global ids of the next ``count`` samples of loader ``dataloader_idx`` in ``stage`` (test or val);
        ``None`` where the loader's order is not fixed (a shuffling sampler), which only a budget refuses."""
        key = (stage, dataloader_idx)
        if key not in self._order:
            sampler = getattr(_loader(trainer, stage, dataloader_idx), "sampler", None)
            ordered = isinstance(sampler, SequentialSampler) or (
                isinstance(sampler, DistributedSampler) and not sampler.shuffle
            )
            # iterating a sampler that shuffles would draw from the global RNG and give another order than the loop's
            self._order[key] = torch.as_tensor(list(iter(sampler)), dtype=torch.long) if ordered else None
            self._position[key] = 0
        start = self._position[key]
        self._position[key] = start + count
        if self._order[key] is None:
            return None
        ids = self._order[key][start : start + count]
        if len(ids) != count:
            raise RuntimeError(f"{stage} loader {dataloader_idx}: batch of {count} past the sampler's {start} samples")
        return ids


def within(ids: torch.Tensor | None, limit: int | None, count: int | None = None) -> int:
    """How many leading samples of a batch with global ``ids`` fall inside a budget of the first ``limit`` samples
    (``None``: all ``count`` of them); the admitted samples of an ordered loader are always a prefix of its batch."""
    if limit is None:
        return len(ids) if ids is not None else int(count or 0)
    if ids is None:
        raise InputError(
            "a sample budget (max_samples and the like) needs test and validation loaders in a fixed order "
            "(SequentialSampler, or a DistributedSampler without shuffle); this loader shuffles"
        )
    inside = ids < limit
    k = int(inside.sum())
    if not bool(inside[:k].all()):
        raise InputError(
            "the samples inside the sample budget are not the first of their batch: the loader repeats or reorders "
            "samples (a padding DistributedSampler?); evaluate with UnrepeatedDistributedSampler, as "
            "MedMNISTDataModule does"
        )
    return k
