"""MedMNISTDataModule: every 2D MedMNIST dataset at every size, held in memory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from datamodules.files import (
    SPLITS,
    MedMNISTFileError,
    MedMNISTSpec,
    file_md5,
    load_arrays,
    locate,
    resolve_root,
    verify_official,
)
from datamodules.tensor_dataset import TensorImageDataset, identity_collate

log = logging.getLogger(__name__)

Subsample = int | float | dict[str, int | float] | None


class MedMNISTDataModule(LightningDataModule):
    """MedMNIST train/val/test splits as float images in [0, 1].

    Metadata (task, channels, classes) always comes from ``medmnist.INFO[flag]``. Files come from ``path`` when given
    (a researcher's own MedMNIST-format file: its MD5 is recorded, not checked), else ``root/<flag>[_<size>].npz``
    checked against the official MD5.

    Args:
        flag: MedMNIST 2D flag, e.g. ``"pneumoniamnist"``.
        size: image side: 28, 64, 128 or 224.
        root: folder with the official files; default ``$MEDMNIST_ROOT``, else ``~/.medmnist``.
        path: a MedMNIST-format ``.npz`` to use instead of the official file.
        download: download the official file into ``root`` when it is missing (needs network).
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for val/test; default ``batch_size``.
        num_workers: DataLoader workers. Batches are one tensor index, so 0 is usually fastest.
        subsample: keep a seeded random subset for quick runs: a count (``int``) or fraction (``float``) for every
            split, or a dict per split such as ``{"train": 1000, "val": 0.5}``.
        subsample_seed: seed of that subset, independent of the training seed.

    Example:
        >>> dm = MedMNISTDataModule("pneumoniamnist", root="../shared/data/medmnist")  # doctest: +SKIP
        >>> dm.setup("fit"); x, y = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self,
        flag: str = "pneumoniamnist",
        size: int = 28,
        root: str | None = None,
        path: str | None = None,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        subsample: Subsample = None,
        subsample_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = MedMNISTSpec(flag, size)  # raises on an unknown flag or size
        self.root = resolve_root(root)
        self.path = Path(path).expanduser() if path else None
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.subsample = _per_split(subsample)
        self.subsample_seed = subsample_seed
        self.md5: str | None = None
        self.datasets: dict[str, TensorImageDataset] = {}
        # Fail before any run is created when the file cannot be there.
        if self.path is not None and not self.path.is_file():
            raise MedMNISTFileError(f"--data.path {self.path} does not exist.")
        if self.path is None and not download:
            locate(self.spec, self.root)

    # Metadata the CLI links into the model.
    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def in_chans(self) -> int:
        return self.spec.in_chans

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def file(self) -> Path:
        return self.path if self.path is not None else self.root / self.spec.filename

    @override
    def prepare_data(self) -> None:
        if self.path is None:
            locate(self.spec, self.root, download_missing=self.download)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        file = self.file
        if self.path is None:
            self.md5 = verify_official(self.spec, locate(self.spec, self.root))
        else:
            self.md5 = file_md5(file)
        arrays = load_arrays(self.spec, file)
        multilabel = self.task == "multilabel"
        for split in SPLITS:
            dataset = TensorImageDataset.from_numpy(*arrays[split], multilabel=multilabel)
            self.datasets[split] = self._subsample(split, dataset)
        sizes = {split: len(ds) for split, ds in self.datasets.items()}
        rank_zero_info(f"{self.spec.flag} ({self.spec.size}px) from {file}, md5 {self.md5}: {sizes}")

    def _subsample(self, split: str, dataset: TensorImageDataset) -> TensorImageDataset:
        amount = self.subsample.get(split)
        if amount is None:
            return dataset
        n = round(amount * len(dataset)) if isinstance(amount, float) else amount
        if not 0 < n <= len(dataset):
            raise ValueError(f"subsample {amount!r} for {split} is outside 1..{len(dataset)} samples")
        generator = torch.Generator().manual_seed(self.subsample_seed + SPLITS.index(split))
        keep = torch.randperm(len(dataset), generator=generator)[:n].sort().values
        return dataset.subset(keep)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the {split} loader")
        dataset = self.datasets[split]
        sampler = None
        if split != "train" and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DistributedSampler pads the last batch with repeated samples; evaluation must count each sample once.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=identity_collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def describe(self) -> dict[str, Any]:
        """What a run records about its data (call after ``setup``)."""
        return {
            "flag": self.spec.flag,
            "size": self.spec.size,
            "file": str(self.file.resolve()),
            "md5": self.md5,
            "official": self.path is None,
            "url": self.spec.url if self.path is None else None,
            "task": self.spec.info["task"],
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "n_samples": {split: len(ds) for split, ds in self.datasets.items()},
        }


def _per_split(subsample: Subsample) -> dict[str, int | float]:
    if subsample is None:
        return {}
    if isinstance(subsample, dict):
        unknown = set(subsample) - set(SPLITS)
        if unknown:
            raise ValueError(f"subsample has unknown splits {sorted(unknown)}; valid: {SPLITS}")
        return dict(subsample)
    return dict.fromkeys(SPLITS, subsample)
