"""Shifted test splits: MedMNIST-C corruptions, a resolution shift, other MedMNIST datasets as OOD; cached on disk."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from medrobust.datamodules.cache import cache_root, save_atomic
from medrobust.datamodules.corruptions import SEVERITIES, check, corrupt, corruptions_for
from medrobust.datamodules.files import SIZES, MedMNISTSpec, load_arrays, locate, resolve_roots, verify_official
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)

#: the shortcut test splits (medrobust.datamodules.shortcuts)
SHORTCUT_SPLITS = ("aligned", "flipped", "absent")
#: bump when a corruption's output changes, so that stale caches are not reused
CORRUPTIONS_VERSION = 1


@dataclass(frozen=True)
class Shift:
    """One shifted test split.

    Attributes:
        kind: ``"corruption"``, ``"resolution"``, ``"ood"`` or ``"shortcut"``.
        name: corruption name, test size, the OOD flag, or the shortcut correlation (aligned, flipped, absent).
        severity: 1..5 for corruptions.
    """

    kind: str
    name: str
    severity: int = 0

    @property
    def split(self) -> str:
        """The split name used in metric names: ``shift/gaussian_noise/s3``, ``shift/resolution_64``, ``ood/x``."""
        if self.kind == "corruption":
            return f"shift/{self.name}/s{self.severity}"
        if self.kind == "resolution":
            return f"shift/resolution_{self.name}"
        if self.kind == "shortcut":
            return f"shortcut/{self.name}"
        return f"ood/{self.name}"


def parse_shifts(specs: list[str], flag: str, size: int) -> list[Shift]:
    """Expand shift specs, validating each against ``flag`` and ``size``.

    Specs: ``"corruptions"`` (every MedMNIST-C corruption of the dataset at severities 1-5),
    ``"corruption:<name>"`` (severities 1-5), ``"corruption:<name>@<k>"``, ``"resolution:<size>"``, ``"ood:<flag>"``.
    """
    shifts: list[Shift] = []
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if kind == "corruptions" and not arg:
            shifts += [Shift("corruption", c, k) for c in corruptions_for(flag) for k in SEVERITIES]
        elif kind == "corruption" and arg:
            name, _, severity = arg.partition("@")
            try:
                levels = [int(severity)] if severity else list(SEVERITIES)
            except ValueError as err:
                raise InputError(f"Severity in {spec!r} is not an integer 1..5") from err
            for level in levels:
                check(flag, name, level)
            shifts += [Shift("corruption", name, k) for k in levels]
        elif kind == "resolution" and arg:
            if not arg.isdigit() or int(arg) not in SIZES or int(arg) == size:
                raise InputError(f"{spec!r}: the test size must be one of {[s for s in SIZES if s != size]}")
            shifts.append(Shift("resolution", arg))
        elif kind == "ood" and arg:
            MedMNISTSpec(arg, size)  # raises on an unknown flag
            if arg == flag:
                raise InputError(f"{spec!r}: the OOD dataset must differ from {flag}")
            shifts.append(Shift("ood", arg))
        elif kind == "shortcut" and arg in SHORTCUT_SPLITS:
            shifts.append(Shift("shortcut", arg))
        else:
            raise InputError(
                f"Unknown shift {spec!r}. Valid: 'corruptions', 'corruption:<name>[@<1..5>]', "
                f"'shortcut:<{'|'.join(SHORTCUT_SPLITS)}>' (with --data.shortcut), "
                f"'resolution:<{'|'.join(str(s) for s in SIZES if s != size)}>', 'ood:<flag>'"
            )
    seen = [s.split for s in shifts]
    duplicates = sorted({s for s in seen if seen.count(s) > 1})
    if duplicates:
        raise InputError(f"Shifts listed twice: {duplicates}")
    return shifts


def corrupted_split(
    images: torch.Tensor, flag: str, names: list[str], seed: int, cache_dir: str | os.PathLike | None
) -> dict[tuple[str, int], torch.Tensor]:
    """Every (corruption, severity) of ``names`` applied to ``images``, from the cache when it holds them.

    The cache key covers the images themselves (so a subsample gets its own entry), the flag, the corruption, the
    seed and :data:`CORRUPTIONS_VERSION`: a cached split is identical to a recomputed one.
    """
    digest = hashlib.md5(images.numpy().tobytes()).hexdigest()[:16]
    folder = cache_root(cache_dir) / f"{flag}_{images.shape[-1]}_{digest}"
    out: dict[tuple[str, int], torch.Tensor] = {}
    todo = []
    for name in names:
        path = folder / f"{name}_seed{seed}_v{CORRUPTIONS_VERSION}.npz"
        if path.is_file():
            with np.load(path) as npz:
                for k in SEVERITIES:
                    out[(name, k)] = torch.from_numpy(npz[f"s{k}"])
        else:
            todo.append((name, path))
    for name, path in tqdm(todo, desc=f"{flag} corruptions", disable=not todo, leave=False):
        arrays = {f"s{k}": corrupt(images, flag, name, k, seed) for k in SEVERITIES}
        out |= {(name, k): arrays[f"s{k}"] for k in SEVERITIES}
        save_atomic(path, {key: value.numpy() for key, value in arrays.items()})
    if todo:
        log.info("built %d corruptions of %s into %s", len(todo), flag, folder)
    return out


def official_split(flag: str, size: int, root: str | None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """An official split (``test`` by default) of another flag or size, MD5-checked, from the same root(s)."""
    spec = MedMNISTSpec(flag, size)
    path = locate(spec, resolve_roots(root))
    verify_official(spec, path)
    return load_arrays(spec, path)[split]


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` to ``channels`` channels: luma for RGB to grey, repetition for grey to RGB."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, channels, -1, -1).contiguous()
