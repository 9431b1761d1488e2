"""The on-disk cache of derived splits (corrupted, shortcut): its folder and atomic writes."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from medrobust.datamodules.files import ENV_CACHE


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else ``$MEDROBUST_CACHE``, else ``~/.cache/medrobust``; derived splits live in its ``shifts/``."""
    return Path(cache_dir or os.environ.get(ENV_CACHE) or "~/.cache/medrobust").expanduser() / "shifts"


def save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` so that readers see the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)  # concurrent builders (DDP ranks) write identical bytes; the last rename wins


def save_reproducible(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed ``.npz`` whose bytes depend only on ``arrays`` (fixed zip timestamps), written atomically: the same
    construction gives the same file and MD5, however often it was interrupted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp.name, path)
