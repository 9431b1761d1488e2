"""Shared fixtures: real MedMNIST files when ../shared/data is present, tiny synthetic MedMNIST-format files always.

Tests write nothing outside their ``tmp_path``: each runs with its ``tmp_path`` as working directory (MLflow's
``./mlruns``, ``runs/``), caches go to the session's temporary folder, and the session fails if a test left a new
file in the repository.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = REPO.parent / "shared" / "data" / "medmnist"
HELPERS = Path(__file__).resolve().parent / "helpers"
#: never walked when looking for files tests left behind (environments, git, and the tools' own caches)
UNWATCHED = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "medrobust.egg-info"}

sys.path.insert(0, str(HELPERS))

# Environment paths mean the folder they were given in, for this process and every subprocess (MEDMNIST_ROOT is
# relative in the README's command; benchmark subprocesses run from benchmarks/).
from medrobust.datamodules.files import absolutize_env_paths  # noqa: E402

absolutize_env_paths()
# The real files, where ../shared is beside the checkout, for the tests that read MEDMNIST_ROOT (README command 2
# sets nothing); a MEDMNIST_ROOT given outside wins.
if SHARED_MEDMNIST.is_dir():
    os.environ.setdefault("MEDMNIST_ROOT", str(SHARED_MEDMNIST))
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="medrobust-tests-"))
os.environ.setdefault("MEDROBUST_CACHE", str(_SESSION_TMP / "cache"))
os.environ.setdefault("MPLCONFIGDIR", str(_SESSION_TMP / "matplotlib"))


def _repo_files() -> set[str]:
    found = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in UNWATCHED]
        found |= {os.path.relpath(os.path.join(root, f), REPO) for f in files}
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._repo_files_before = _repo_files()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_repo_files_before", None)
    if before is None:
        return
    left = sorted(_repo_files() - before)
    if left:
        pytest.exit(f"tests left files in the repository (they must write only into tmp_path): {left[:20]}", 1)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own tmp_path: relative outputs (mlruns/, runs/, mlflow.db) land there."""
    monkeypatch.chdir(tmp_path)


def write_medmnist_npz(
    path: Path, flag: str, size: int = 28, n: tuple[int, int, int] = (48, 16, 16), seed: int = 0
) -> Path:
    """A MedMNIST-format file with the shapes ``flag`` implies and a learnable signal.

    The label shifts the mean brightness, and a class-specific bright square is drawn, so a tiny model learns it.
    """
    from medrobust.datamodules.files import MedMNISTSpec

    spec = MedMNISTSpec(flag, size)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        if spec.task == "multilabel":
            labels = (rng.random((count, spec.num_classes)) < 0.3).astype(np.uint8)
            signal = labels[:, 0].astype(float)
        else:
            labels = (np.arange(count) % spec.num_classes).reshape(-1, 1).astype(np.uint8)
            rng.shuffle(labels)
            signal = labels[:, 0] / max(spec.num_classes - 1, 1)
        shape = (count, size, size) if spec.in_chans == 1 else (count, size, size, 3)
        images = rng.normal(60 + 120 * signal.reshape((-1,) + (1,) * (len(shape) - 1)), 25, shape)
        arrays[f"{split}_images"] = images.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def synthetic_npz(tmp_path: Path):
    """Factory: ``synthetic_npz(flag, size=28, n=(48, 16, 16))`` -> path of a fresh synthetic file."""

    def make(flag: str = "pneumoniamnist", size: int = 28, **kwargs: object) -> Path:
        return write_medmnist_npz(tmp_path / "data" / f"{flag}_{size}_synthetic.npz", flag, size, **kwargs)

    return make


@pytest.fixture
def real_root() -> Path:
    """The folder of real MedMNIST files; skips where ../shared/data is absent."""
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found in {SHARED_MEDMNIST}")
    return SHARED_MEDMNIST


@pytest.fixture
def pneumonia_data_args(tmp_path: Path) -> list[str]:
    """CLI data arguments: the real PneumoniaMNIST when present, else a synthetic stand-in, subsampled for speed."""
    if (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        source = [f"--data.root={SHARED_MEDMNIST}"]
    else:
        source = [f"--data.path={write_medmnist_npz(tmp_path / 'pneumonia.npz', 'pneumoniamnist', n=(256, 64, 64))}"]
    return [*source, "--data.flag=pneumoniamnist", "--data.subsample={train: 256, val: 64, test: 64}"]


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An embedded SQLite store in tmp_path, with the working directory there too (mlruns/, runs/)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def quiet_trainer(tmp_path: Path, **kwargs: object):
    """A real CPU Trainer for tests: no logger, checkpoints, progress bar or model summary unless asked for."""
    from lightning.pytorch import Trainer

    defaults = dict(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**(defaults | kwargs))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for ``medrobust`` subprocesses: test helpers importable, no GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env
