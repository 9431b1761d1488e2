"""Find, verify, download and explain MedMNIST ``.npz`` files.

The ``medmnist`` package is the source of truth for metadata (``medmnist.INFO``): URLs, MD5s, tasks, labels and split
sizes. It is imported lazily because importing it creates ``~/.medmnist`` as a side effect.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
ENV_ROOT = "MEDMNIST_ROOT"
ENV_CACHE = "MEDROBUST_CACHE"
DEFAULT_ROOT = "~/.medmnist"

# medmnist's task strings, mapped onto the three loss/metric regimes a classifier needs. Ordinal regression
# (RetinaMNIST) is trained as multi-class, as in the MedMNIST v2 benchmark.
TASKS = {
    "binary-class": "multiclass",
    "multi-class": "multiclass",
    "ordinal-regression": "multiclass",
    "multi-label, binary-class": "multilabel",
}


class MedMNISTFileError(InputError):
    """A MedMNIST file is missing, corrupt or malformed. The message says what to do about it."""


@cache
def medmnist_info() -> dict[str, dict[str, Any]]:
    """``medmnist.INFO`` restricted to the 2D datasets.

    Importing ``medmnist`` creates ``~/.medmnist`` as a side effect; we only want its metadata table, so the import
    runs with ``HOME`` pointed at a throwaway folder (``medmnist``'s own default root is never used here).
    """
    with tempfile.TemporaryDirectory() as home:
        saved = os.environ.get("HOME")
        os.environ["HOME"] = home
        try:
            from medmnist import INFO
        finally:
            if saved is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = saved
    return {flag: info for flag, info in INFO.items() if not info["python_class"].endswith("3D")}


@dataclass(frozen=True)
class MedMNISTSpec:
    """Metadata of one 2D MedMNIST dataset at one size.

    Args:
        flag: MedMNIST flag, e.g. ``"pneumoniamnist"``.
        size: image side in pixels, one of 28, 64, 128, 224.
    """

    flag: str
    size: int = 28

    def __post_init__(self) -> None:
        flags = medmnist_info()
        if self.flag not in flags:
            raise InputError(f"Unknown 2D MedMNIST flag {self.flag!r}. Valid flags: {', '.join(sorted(flags))}.")
        if self.size not in SIZES:
            raise InputError(f"MedMNIST has no size {self.size!r} for {self.flag}. Valid sizes: {SIZES}.")

    @property
    def info(self) -> dict[str, Any]:
        return medmnist_info()[self.flag]

    @property
    def _suffix(self) -> str:
        return "" if self.size == 28 else f"_{self.size}"

    @property
    def filename(self) -> str:
        return f"{self.flag}{self._suffix}.npz"

    @property
    def url(self) -> str:
        return self.info[f"url{self._suffix}"]

    @property
    def md5(self) -> str:
        return self.info[f"MD5{self._suffix}"]

    @property
    def task(self) -> str:
        """``"multiclass"`` or ``"multilabel"``."""
        return TASKS[self.info["task"]]

    @property
    def num_classes(self) -> int:
        return len(self.info["label"])

    @property
    def in_chans(self) -> int:
        return int(self.info["n_channels"])

    @property
    def class_names(self) -> list[str]:
        return [self.info["label"][str(i)] for i in range(self.num_classes)]

    @property
    def n_samples(self) -> dict[str, int]:
        return dict(self.info["n_samples"])


def resolve_roots(root: str | os.PathLike | None) -> list[Path]:
    """The folders to look for official files in: ``root`` if given, else ``$MEDMNIST_ROOT``, else ``~/.medmnist``.

    Either may list several folders separated by ``os.pathsep`` (``:``), searched in order; a missing file is
    downloaded (when allowed) into the last one, e.g. ``MEDMNIST_ROOT=../shared/data/medmnist:~/.medmnist``.
    """
    text = str(root) if root else os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return [Path(part).expanduser() for part in text.split(os.pathsep) if part] or [Path(DEFAULT_ROOT).expanduser()]


def absolutize_env_paths(environ: os._Environ | dict[str, str] = os.environ) -> None:
    """Resolve ``$MEDMNIST_ROOT`` and ``$MEDROBUST_CACHE`` once, against the working directory they were given in.

    Called where a process starts (the ``medrobust`` command, the test session, the benchmarks): a relative
    ``MEDMNIST_ROOT=../shared/data/medmnist`` then means the same folder to every subprocess, whatever its own
    working directory.
    """
    for key in (ENV_ROOT, ENV_CACHE):
        value = environ.get(key)
        if value:
            parts = [str(Path(part).expanduser().absolute()) for part in value.split(os.pathsep) if part]
            environ[key] = os.pathsep.join(parts)


def missing_file_message(spec: MedMNISTSpec, roots: list[Path], reason: str = "") -> str:
    searched = ", ".join(str(r) for r in roots)
    return (
        f"MedMNIST file {spec.filename} not found in {searched}{f' ({reason})' if reason else ''}.\n"
        f"  Download it from {spec.url}\n"
        f"  (MD5 {spec.md5}) and save it as {roots[-1] / spec.filename},\n"
        f"  or point --data.root / ${ENV_ROOT} at the folder that holds it, or pass --data.download true online."
    )


def download(spec: MedMNISTSpec, roots: list[Path]) -> Path:
    """Download the official file into the last root, with torchvision's MD5-checking downloader (as ``medmnist``).

    The file is fetched into a temporary folder and moved into the root only once it is whole and its MD5 checked:
    a failed download (offline, a mistyped ``--data.root`` or ``$MEDMNIST_ROOT``) creates no folder and no file."""
    from torchvision.datasets.utils import download_url

    root = roots[-1]
    try:
        with tempfile.TemporaryDirectory(prefix="medrobust-download-") as tmp:
            download_url(spec.url, tmp, filename=spec.filename, md5=spec.md5)
            root.mkdir(parents=True, exist_ok=True)
            part = root / f".{spec.filename}.{os.getpid()}.part"  # DDP processes may download at once: one each
            shutil.move(str(Path(tmp) / spec.filename), part)
            os.replace(part, root / spec.filename)  # the same checked bytes, whichever process lands last
    except Exception as err:  # network errors come in many types (URLError, HTTPError, socket errors)
        raise MedMNISTFileError(missing_file_message(spec, roots, f"download failed: {err}")) from err
    return root / spec.filename


def find(spec: MedMNISTSpec, roots: list[Path]) -> Path | None:
    """The official file in the first root that holds it."""
    return next((root / spec.filename for root in roots if (root / spec.filename).is_file()), None)


def locate(spec: MedMNISTSpec, roots: list[Path], download_missing: bool = False) -> Path:
    """Path of the official file, downloading it if allowed; raises a helpful error otherwise."""
    path = find(spec, roots)
    if path is not None:
        return path
    if download_missing:
        return download(spec, roots)
    raise MedMNISTFileError(missing_file_message(spec, roots))


def verify_official(spec: MedMNISTSpec, path: Path) -> str:
    """Check an official file's MD5 against ``medmnist.INFO``; returns the MD5."""
    md5 = file_md5(path)
    if md5 != spec.md5:
        raise MedMNISTFileError(
            f"MD5 mismatch for {path}: got {md5}, expected {spec.md5} for {spec.flag} at size {spec.size}.\n"
            f"  The file is corrupt, truncated or a different dataset. Delete it and download {spec.url} again.\n"
            f"  To use a modified MedMNIST-format file on purpose, pass it as --data.path instead of --data.root."
        )
    return md5


def load_arrays(spec: MedMNISTSpec, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and validate ``{split}_images`` / ``{split}_labels`` for every split.

    Single-label files may store labels as ``(N,)`` instead of MedMNIST's ``(N, 1)``; they are accepted.

    Returns:
        ``{split: (images, labels)}`` with images uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` and labels ``(N, L)``.
    """
    try:
        npz = np.load(path)
    except Exception as err:  # np.load raises ValueError, OSError, zipfile.BadZipFile, EOFError...
        raise MedMNISTFileError(f"{path} is not a readable .npz file: {err}") from err
    with npz:
        expected = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
        missing = [key for key in expected if key not in npz.files]
        if missing:
            raise MedMNISTFileError(
                f"{path} lacks keys {missing}; a MedMNIST-format file holds {expected} (found {sorted(npz.files)})."
            )
        arrays = {split: (npz[f"{split}_images"], npz[f"{split}_labels"]) for split in SPLITS}
    for split, (images, labels) in arrays.items():
        if labels.ndim == 1 and spec.task != "multilabel":
            labels = labels.reshape(-1, 1)
            arrays[split] = (images, labels)
        _check_split(spec, path, split, images, labels)
    return arrays


def load_masks(path: Path, n_test: int, size: int) -> np.ndarray | None:
    """The file's ``test_masks`` (binary evidence masks, one per test image) as uint8 ``(N, H, W)``, or ``None``.

    Where a user's file brings annotations (a lesion, an organ) for saliency alignment; checked: one per
    ``test_images`` entry, at the image size, binary (0/1 or bool).
    """
    with np.load(path) as npz:
        if "test_masks" not in npz.files:
            return None
        masks = npz["test_masks"]
    if masks.shape != (n_test, size, size):
        raise MedMNISTFileError(
            f"{path}: test_masks has shape {masks.shape}; expected ({n_test}, {size}, {size}), one binary mask per "
            "test image at the image size."
        )
    values = np.unique(masks)
    if not np.isin(values, [0, 1]).all():
        raise MedMNISTFileError(
            f"{path}: test_masks must be binary (0/1 or bool); found values {values[:8].tolist()}"
            f"{' (a 0/255 mask: divide by 255)' if values.max() == 255 else ''}."
        )
    return masks.astype(np.uint8)


def _check_split(spec: MedMNISTSpec, path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    want = (spec.size, spec.size) if spec.in_chans == 1 else (spec.size, spec.size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != want:
        raise MedMNISTFileError(
            f"{path}: {split}_images has dtype {images.dtype} and shape {images.shape}; {spec.flag} at size "
            f"{spec.size} needs uint8 (N, {', '.join(map(str, want))})."
        )
    n_labels = spec.num_classes if spec.task == "multilabel" else 1
    if labels.ndim != 2 or labels.shape != (len(images), n_labels):
        raise MedMNISTFileError(
            f"{path}: {split}_labels has shape {labels.shape}; expected ({len(images)}, {n_labels})"
            f"{f' or ({len(images)},)' if n_labels == 1 else ''} to match {split}_images for {spec.flag}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= (2 if spec.task == "multilabel" else spec.num_classes)):
        raise MedMNISTFileError(
            f"{path}: {split}_labels holds values in [{labels.min()}, {labels.max()}], outside the "
            f"{spec.num_classes} classes of {spec.flag}."
        )
