"""MedMNISTDataModule: every 2D MedMNIST dataset at every size, held in memory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, WeightedRandomSampler
from typing_extensions import override

from medrobust.datamodules.evidence import Evidence, check_distinct, evidence_split
from medrobust.datamodules.files import (
    SPLITS,
    MedMNISTFileError,
    MedMNISTSpec,
    find,
    load_arrays,
    load_masks,
    locate,
    resolve_roots,
    verify_official,
)
from medrobust.datamodules.remote import fetch_dataset
from medrobust.datamodules.shifts import SHORTCUT_SPLITS, corrupted_split, official_split, parse_shifts, to_channels
from medrobust.datamodules.shortcuts import Shortcut, shortcut_split
from medrobust.datamodules.tensor_dataset import TensorImageDataset, identity_collate
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import is_remote
from medrobust.utilities.seeds import run_seed

log = logging.getLogger(__name__)

Subsample = int | float | dict[str, int | float] | None


class MedMNISTDataModule(LightningDataModule):
    """MedMNIST train/val/test splits as float images in [0, 1].

    Metadata (task, channels, classes) always comes from ``medmnist.INFO[flag]``. Files come from ``path`` when given
    (a researcher's own MedMNIST-format file: its MD5 is recorded, not checked), else ``root/<flag>[_<size>].npz``
    checked against the official MD5. Labels stored as ``(N,)`` instead of ``(N, 1)`` are accepted for single-label
    tasks.

    Args:
        flag: MedMNIST 2D flag, e.g. ``"pneumoniamnist"``.
        size: image side: 28, 64, 128 or 224.
        root: folder with the official files; default ``$MEDMNIST_ROOT``, else ``~/.medmnist``. Several folders
            separated by ``os.pathsep`` (``:``) are searched in order.
        path: a MedMNIST-format ``.npz`` to use instead of the official file, or one logged to MLflow
            (``runs:/<run_id>/<path>``, a run id or ``mlflow:<experiment>/<run name>``: a ``medrobust construct``
            run), fetched once into the cache from ``$MLFLOW_TRACKING_URI`` (``fit`` sets it to its logger's URI).
        download: download the official file into the last ``root`` folder when no folder holds it (needs network).
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for val/test; default ``batch_size``.
        num_workers: DataLoader workers. Batches are one tensor index, so 0 is usually fastest.
        subsample: keep a seeded random subset for quick runs: a count (``int``: at most that many per split, so a
            smaller split is kept whole) or fraction (``float``) for every split, or a dict per split such as
            ``{"train": 1000, "val": 0.5}`` (a count larger than its split is refused).
        subsample_seed: seed of that subset; ``None``: the training split's subset is drawn with the run's seed
            (``seed_everything``), so that each seed of a study trains on its own subset, and the validation and
            test subsets with seed 0, the same for every run (a ``medrobust test`` of any seed sees the same test
            images); set a number to draw every split's subset with it, the same across seeds.
        shifts: extra test splits, after the in-distribution one: ``"corruptions"`` (every MedMNIST-C corruption of the
            dataset at severities 1-5), ``"corruption:<name>[@<k>]"``, ``"resolution:<size>"`` (the official test
            split at another size, fed at that size), ``"ood:<flag>"`` (another dataset's test split, labels -1).
        shift_seed: seed of the random corruptions.
        sampler: ``"random"`` (shuffle) or ``"balanced"``: draw training samples with probability inversely
            proportional to their class's count, so each epoch sees the classes about equally often (single-label
            tasks; as many draws as the split has samples, with replacement).
        cache_dir: where corrupted and shortcut splits are cached; default ``$MEDROBUST_CACHE``, else
            ``~/.cache/medrobust``.
        shortcut: inject a spurious feature correlated with the label into the training and validation splits
            (:class:`~medrobust.datamodules.shortcuts.Shortcut`: ``{kind: patch, strength: 0.95, target_class: 1,
            ...}``) and
            add the test splits ``shortcut/aligned``, ``shortcut/flipped`` and ``shortcut/absent`` (unless ``shifts``
            names some as ``shortcut:<correlation>``), whose batches carry per-sample group labels. A localised
            shortcut's (patch, text) test splits carry the marker masks too.
        evidence: inject a label-carrying pattern at a random, recorded position into every split
            (:class:`~medrobust.datamodules.evidence.Evidence`: ``{pattern: bars, size: 0.25, contrast: 0.4}``); its
            masks are
            the test split's evidence masks (:meth:`masked_splits`). A file's own ``test_masks`` are read without it.

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
        subsample_seed: int | None = None,
        shifts: list[str] | None = None,
        shift_seed: int = 0,
        cache_dir: str | None = None,
        sampler: Literal["random", "balanced"] = "random",
        shortcut: dict[str, Any] | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = MedMNISTSpec(flag, size)  # raises on an unknown flag or size
        self.roots = resolve_roots(root)
        self.source_uri = path if path and is_remote(path) else None  # an MLflow artifact, fetched into the cache
        self.path = fetch_dataset(path, cache_dir) if self.source_uri else Path(path).expanduser() if path else None
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.subsample_arg = subsample
        self.subsample = _per_split(subsample)
        self.subsample_seed = subsample_seed
        self.shortcut = self._parse_shortcut(shortcut)
        if self.shortcut is not None and not any(s.startswith("shortcut:") for s in shifts or []):
            shifts = [*(shifts or []), *(f"shortcut:{c}" for c in SHORTCUT_SPLITS)]
        self.shifts = parse_shifts(shifts or [], flag, size)  # raises, listing valid choices
        if self.shortcut is None and any(s.kind == "shortcut" for s in self.shifts):
            raise InputError("shortcut:<correlation> test splits need --data.shortcut (the feature to inject)")
        self.evidence = self._parse_evidence(evidence)
        self.shift_seed = shift_seed
        self.cache_dir = cache_dir
        if sampler not in ("random", "balanced"):
            raise InputError(f"Unknown sampler {sampler!r}; valid: random, balanced")
        if sampler == "balanced" and self.spec.task == "multilabel":
            raise InputError("sampler='balanced' needs one class per sample; for multi-label tasks use class_weights")
        self.sampler = sampler
        self.md5: str | None = None
        self.datasets: dict[str, TensorImageDataset] = {}
        self.shifted: dict[str, TensorImageDataset] = {}
        self.shortcut_groups: dict[str, torch.Tensor] = {}
        # Fail before any run is created when the file cannot be there.
        if self.path is not None and not self.path.is_file():
            raise MedMNISTFileError(f"--data.path {self.path} does not exist.")
        if self.path is None and not download:
            locate(self.spec, self.roots)

    def _parse_evidence(self, evidence: dict[str, Any] | None) -> Evidence | None:
        if evidence is None:
            return None
        if self.spec.task == "multilabel":
            raise InputError("evidence patterns code one class per image; multi-label tasks are not supported")
        if self.shortcut is not None:
            raise InputError("--data.evidence and --data.shortcut both inject into the images; use one at a time")
        parsed = Evidence.parse(evidence)
        check_distinct(parsed, self.spec.num_classes, self.spec.size)  # before any run: distinct per class
        return parsed

    def _parse_shortcut(self, shortcut: dict[str, Any] | None) -> Shortcut | None:
        if shortcut is None:
            return None
        if self.spec.task == "multilabel":
            raise InputError("A shortcut correlates a feature with one class; multi-label tasks are not supported")
        return Shortcut.parse(shortcut, self.spec.num_classes)

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
    def input_size(self) -> int:
        """The image side the model sees (linked to ``model.input_size`` by the CLI)."""
        return self.spec.size

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def file(self) -> Path:
        if self.path is not None:
            return self.path
        return find(self.spec, self.roots) or self.roots[-1] / self.spec.filename

    @override
    def prepare_data(self) -> None:
        if self.path is None:
            locate(self.spec, self.roots, download_missing=self.download)

    @property
    def test_split_names(self) -> list[str]:
        """Names of the test loaders, in order: ``id`` first, then each shift's split name."""
        return ["id", *(shift.split for shift in self.shifts)]

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self._load()
        if stage in (None, "test") and self.shifts and not self.shifted:
            self._build_shifts()
        if self.trainer is not None:
            self.check_shards(self.trainer.world_size)

    def masked_splits(self) -> dict[str, TensorImageDataset]:
        """The test splits (by :attr:`test_split_names` name) that carry evidence masks: ``id`` with
        ``--data.evidence`` or a file's ``test_masks``; a localised shortcut's ``shortcut/*`` splits."""
        splits = {"id": self.datasets.get("test"), **self.shifted}
        return {name: ds for name, ds in splits.items() if ds is not None and ds.masks is not None}

    def check_shards(self, world_size: int) -> None:
        """Refuse evaluation splits with fewer samples than processes.

        Evaluation loaders never pad (each sample counts once), so with fewer samples than processes some process
        gets none; Lightning then skips that process's evaluation loop, and the others would wait for it in every
        reduction. Splits with at least one sample per process are fine, however unevenly they divide.
        """
        if world_size <= 1:
            return
        splits = {k: v for k, v in self.datasets.items() if k != "train"} | self.shifted
        small = {split: len(ds) for split, ds in splits.items() if len(ds) < world_size}
        if small:
            raise InputError(
                f"Evaluation splits {small} have fewer samples than the {world_size} processes: each process needs "
                "at least one (evaluation never pads, so that each sample counts once). Use more samples "
                "(--data.subsample) or fewer devices."
            )

    def _load(self) -> None:
        file = self.file
        if self.path is None:
            self.md5 = verify_official(self.spec, locate(self.spec, self.roots))
        else:
            self.md5 = file_md5(file)
        arrays = load_arrays(self.spec, file)
        multilabel = self.task == "multilabel"
        user_masks = load_masks(file, len(arrays["test"][0]), self.spec.size)
        if user_masks is not None and self.evidence is not None:
            raise InputError(f"{file} has its own test_masks; --data.evidence would replace them. Use one or the other")
        for split in SPLITS:
            dataset = TensorImageDataset.from_numpy(*arrays[split], multilabel=multilabel)
            if split == "test" and user_masks is not None:
                dataset = TensorImageDataset(dataset.images, dataset.labels, masks=torch.from_numpy(user_masks))
            dataset = self._subsample(split, dataset)
            if self.evidence is not None:
                seed = self.evidence.seed * 100 + SPLITS.index(split)
                images, masks = evidence_split(
                    dataset.images, dataset.labels, self.evidence, self.num_classes, seed, self.cache_dir
                )
                dataset = TensorImageDataset(images, dataset.labels, masks=masks)
            if self.shortcut is not None and self.shortcut.train and split != "test":
                # training batches stay (x, y): who carries the feature is kept aside, for the record
                images, self.shortcut_groups[split], _ = self._shortcut(dataset, "aligned", SPLITS.index(split))
                dataset = TensorImageDataset(images, dataset.labels)
            self.datasets[split] = dataset
        sizes = {split: len(ds) for split, ds in self.datasets.items()}
        rank_zero_info(f"{self.spec.flag} ({self.spec.size}px) from {file}, md5 {self.md5}: {sizes}")

    def _build_shifts(self) -> None:
        test = self.datasets["test"]
        names = sorted({s.name for s in self.shifts if s.kind == "corruption"})
        corrupted = corrupted_split(test.images, self.spec.flag, names, self.shift_seed, self.cache_dir)
        for shift in self.shifts:
            if shift.kind == "corruption":
                images, labels = corrupted[(shift.name, shift.severity)], test.labels
            elif shift.kind == "resolution":
                other = TensorImageDataset.from_numpy(
                    *official_split(self.spec.flag, int(shift.name), os.pathsep.join(map(str, self.roots))),
                    multilabel=self.task == "multilabel",
                )
                images, labels = other.images, other.labels
            elif shift.kind == "shortcut":
                images, carries, masks = self._shortcut(test, shift.name, 10 + SHORTCUT_SPLITS.index(shift.name))
                self.shifted[shift.split] = TensorImageDataset(images, test.labels, carries.long(), masks)
                continue
            else:
                images = self.other_dataset(shift.name, "test")
                shape = (len(images), self.num_classes) if self.task == "multilabel" else (len(images),)
                labels = torch.full(shape, -1, dtype=test.labels.dtype)
            self.shifted[shift.split] = TensorImageDataset(images, labels)

    def _shortcut(
        self, dataset: TensorImageDataset, correlation: str, offset: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images, carries, masks)``: the split's images with the shortcut injected under ``correlation``, who
        carries it, and the marker masks of a localised shortcut."""
        seed = self.shortcut.seed * 100 + offset
        return shortcut_split(dataset.images, dataset.labels, self.shortcut, correlation, seed, self.cache_dir)

    def _subsample(self, split: str, dataset: TensorImageDataset) -> TensorImageDataset:
        amount = self.subsample.get(split)
        if amount is None:
            return dataset
        n = round(amount * len(dataset)) if isinstance(amount, float) else amount
        if isinstance(amount, int) and not isinstance(self.subsample_arg, dict):
            n = min(n, len(dataset))  # one count for every split: "at most n", so a small validation split is kept
        if not 0 < n <= len(dataset):
            raise InputError(f"subsample {amount!r} for {split} is outside 1..{len(dataset)} samples")
        seed = self.subset_seed(split)
        if split == "train":
            self._train_subset_seed = seed  # as drawn: checkpoints and the run record this one
        generator = torch.Generator().manual_seed(seed + SPLITS.index(split))
        keep = torch.randperm(len(dataset), generator=generator)[:n].sort().values
        return dataset.subset(keep)

    def _loader(self, split: str, shuffle: bool, evaluation: bool | None = None) -> DataLoader:
        evaluation = split != "train" if evaluation is None else evaluation
        dataset = self.datasets.get(split, self.shifted.get(split))
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the {split} loader")
        sampler = None
        if not evaluation and self.sampler == "balanced":
            counts, _ = self.label_counts("train")
            weights = 1.0 / counts.clamp_min(1).double()[dataset.labels]
            sampler, shuffle = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True), False
        if evaluation and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DistributedSampler pads the last batch with repeated samples; evaluation must count each sample once.
            # (check_shards has made sure that each process gets at least one.)
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size if evaluation else self.batch_size,
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
    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.shifts:
            return self._loader("test", shuffle=False)
        return [self._loader("test", shuffle=False), *(self._loader(s.split, shuffle=False) for s in self.shifts)]

    def eval_dataloader(self, split: str) -> DataLoader:
        """Any split (``train`` included) as evaluation reads it: in order, no augmentation or sampler, each sample once
        over all processes (for fitting detectors on the training split, say)."""
        return self._loader(split, shuffle=False, evaluation=True)

    def other_dataset(self, flag: str, split: str) -> torch.Tensor:
        """uint8 images ``(N, C, H, W)`` of another dataset's official ``split`` at this size and channel count (an
        outlier set to calibrate a detector on, for example), MD5-checked, from the same root(s)."""
        arrays = official_split(flag, self.spec.size, os.pathsep.join(map(str, self.roots)), split)
        images = TensorImageDataset.from_numpy(arrays[0], np.zeros((len(arrays[0]), 1)), multilabel=False).images
        return to_channels(images, self.in_chans)

    def label_counts(self, split: str) -> tuple[torch.Tensor, int]:
        """``(counts, n)``: samples per class (positives per label for multi-label tasks) and samples in ``split``."""
        labels = self.datasets[split].labels
        if self.task == "multilabel":
            return labels.sum(0).long(), len(labels)
        return torch.bincount(labels, minlength=self.num_classes), len(labels)

    def subset_seed(self, split: str = "train") -> int:
        """The seed of ``split``'s subsample: ``subsample_seed``, else the run's for the training split and 0 for the
        others."""
        if self.subsample_seed is not None:
            return self.subsample_seed
        return run_seed() if split == "train" else 0

    @property
    def drawn_subset_seed(self) -> int | None:
        """The seed the training subset was drawn with (``None`` before ``setup`` or without a training subset)."""
        return getattr(self, "_train_subset_seed", None)

    @override
    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the training subset's seed as drawn, so a teacher's data is rebuilt as it was."""
        return {"subset_seed": self.drawn_subset_seed} if self.drawn_subset_seed is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume: the training subset must be the one the checkpoint was trained on."""
        saved, drawn = state_dict.get("subset_seed"), self.drawn_subset_seed
        if saved is not None and drawn is not None and saved != drawn:
            raise InputError(
                f"this checkpoint trained on the training subset drawn with seed {saved}; this run drew it with seed "
                f"{drawn}: resume with --seed_everything {saved}, or set --data.subsample_seed {saved}"
            )

    def init_ancestors(self) -> list[str]:
        """A dataset fetched from an MLflow run (a constructed one, ``medrobust construct``) by its MD5: a model trained
        on it starts from other weights than the source model that made it
        (:mod:`~medrobust.lightning_modules.nets.independent_init`)."""
        return [f"data:{self.md5}"] if self.source_uri is not None and self.md5 is not None else []

    def describe(self) -> dict[str, Any]:
        """What a run records about its data (call after ``setup``)."""
        return {
            "flag": self.spec.flag,
            "size": self.spec.size,
            "file": str(self.file.resolve()),
            "md5": self.md5,
            "subsample_seed": self.drawn_subset_seed,
            "official": self.path is None,
            "source_uri": self.source_uri,
            "url": self.spec.url if self.path is None else None,
            "task": self.spec.info["task"],
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "n_samples": {split: len(ds) for split, ds in self.datasets.items()},
            "label_counts": {split: self.label_counts(split)[0].tolist() for split in self.datasets},
            "shortcut": None if self.shortcut is None else self.shortcut.describe() | {"carriers": self.carriers()},
            "evidence": None if self.evidence is None else self.evidence.describe(),
            "masked_splits": sorted(self.masked_splits()),
        }

    def carriers(self) -> dict[str, list[float]]:
        """Per split with group labels, the fraction of each class that carries the shortcut feature."""
        out = {}
        groups = self.shortcut_groups | {k: v.groups for k, v in self.shifted.items() if v.groups is not None}
        for split, carries in groups.items():
            labels = self.datasets[split].labels if split in self.datasets else self.shifted[split].labels
            counts = torch.bincount(labels, minlength=self.num_classes).clamp_min(1)
            carrying = torch.bincount(labels[carries.bool()], minlength=self.num_classes)
            out[split] = [round(float(v), 4) for v in carrying / counts]
        return out


def _per_split(subsample: Subsample) -> dict[str, int | float]:
    if subsample is None:
        return {}
    if isinstance(subsample, dict):
        unknown = set(subsample) - set(SPLITS)
        if unknown:
            raise InputError(f"subsample has unknown splits {sorted(unknown)}; valid: {SPLITS}")
        return dict(subsample)
    return dict.fromkeys(SPLITS, subsample)
