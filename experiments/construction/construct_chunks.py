"""Chunks of a construction on disk, so that a killed ``medrobust construct`` continues where it stopped.

``<out>.parts/`` holds ``settings.json`` (what is being built) and one ``chunk_<k>.npz`` per finished chunk, each
written atomically. A chunk's result depends only on the settings and its index, so a resumed construction gives the
same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.datamodules.cache import save_atomic
from medrobust.utilities.errors import InputError


class ChunkStore:
    """The finished chunks of one construction.

    Args:
        folder: where the chunks live (``<out>.parts``).
        settings: everything the result depends on; a folder holding another construction's chunks is refused.
    """

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        self.settings = json.loads(json.dumps(settings))  # as it reads back from disk
        manifest = folder / "settings.json"
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            if found != self.settings:
                changed = sorted(k for k in found.keys() | self.settings.keys() if found.get(k) != self.settings.get(k))
                raise InputError(
                    f"{folder} holds the chunks of a construction with other settings (differing: {changed}). "
                    "Delete the folder to start afresh, or give another --out."
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            manifest.write_text(json.dumps(self.settings, indent=1, sort_keys=True))

    def path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:05d}.npz"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        save_atomic(self.path(index), arrays)

    def load(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.path(index)) as npz:
            return {key: npz[key] for key in npz.files}

    def gather(self, n_chunks: int) -> dict[str, np.ndarray]:
        """Every chunk's arrays, concatenated in chunk order."""
        parts = [self.load(i) for i in range(n_chunks)]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
