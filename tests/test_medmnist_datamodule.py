"""MedMNISTDataModule on real files and on synthetic files of every task type, channel count and two sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medrobust.datamodules.files import MedMNISTFileError, MedMNISTSpec
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.utilities.hashing import file_md5

# flag -> (task regime, channels, classes): binary, multi-class, ordinal, multi-label; 1 and 3 channels
CASES = {
    "pneumoniamnist": ("multiclass", 1, 2),
    "pathmnist": ("multiclass", 3, 9),
    "retinamnist": ("multiclass", 3, 5),
    "chestmnist": ("multilabel", 1, 14),
    "dermamnist": ("multiclass", 3, 7),
}


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("flag", sorted(CASES))
def test_synthetic_file_every_task(synthetic_npz, flag: str, size: int) -> None:
    task, chans, classes = CASES[flag]
    dm = MedMNISTDataModule(flag, size, path=str(synthetic_npz(flag, size)), batch_size=8)
    assert (dm.task, dm.in_chans, dm.num_classes) == (task, chans, classes)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 48, "val": 16, "test": 16}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, chans, size, size) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    if task == "multilabel":
        assert y.shape == (8, classes) and y.dtype == torch.float32
    else:
        assert y.shape == (8,) and y.dtype == torch.int64 and int(y.max()) < classes
    # the user's own file: its MD5 is recorded, not checked against INFO
    assert dm.describe()["md5"] == file_md5(dm.file) and dm.describe()["official"] is False


def test_served_values_match_file(synthetic_npz) -> None:
    path = synthetic_npz("pathmnist", 28)
    dm = MedMNISTDataModule("pathmnist", path=str(path), batch_size=16)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    with np.load(path) as npz:
        expected = torch.from_numpy(npz["test_images"][:16]).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(npz["test_labels"][:16, 0].astype(np.int64))
    assert torch.equal(x, expected) and torch.equal(y, labels)


@pytest.mark.parametrize(
    ("flag", "md5"),
    [
        ("pneumoniamnist", "28209eda62fecd6e6a2d98b1501bb15f"),
        ("breastmnist", "750601b1f35ba3300ea97c75c52ff8f6"),
    ],
)
def test_real_official_files(real_root, flag: str, md5: str) -> None:
    dm = MedMNISTDataModule(flag, root=str(real_root))
    dm.setup("fit")
    spec = MedMNISTSpec(flag)
    assert dm.md5 == md5 == spec.md5
    assert {k: len(v) for k, v in dm.datasets.items()} == spec.n_samples
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and set(y.unique().tolist()) <= {0, 1}
    assert dm.describe()["official"] is True and dm.describe()["url"] == spec.url


def test_root_from_environment(real_root, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMNIST_ROOT", str(real_root))
    assert MedMNISTDataModule("breastmnist").file == real_root / "breastmnist.npz"


@pytest.mark.parametrize("amount", [20, 0.25])
def test_subsample_is_seeded(synthetic_npz, amount) -> None:
    path = str(synthetic_npz("pathmnist"))

    def labels(seed: int) -> torch.Tensor:
        dm = MedMNISTDataModule("pathmnist", path=path, subsample={"train": amount}, subsample_seed=seed)
        dm.setup("fit")
        assert len(dm.datasets["val"]) == 16  # other splits untouched
        return dm.datasets["train"].images

    first = labels(0)
    assert len(first) == (20 if amount == 20 else 12)
    assert torch.equal(first, labels(0)) and not torch.equal(first, labels(1))


def test_subsample_too_large(synthetic_npz) -> None:
    """One count for every split means at most that many (a small validation split stays whole); a count for a
    named split that exceeds it is refused."""
    dm = MedMNISTDataModule("pathmnist", path=str(synthetic_npz("pathmnist")), subsample=1000)
    dm.setup("fit")
    assert {split: len(ds) for split, ds in dm.datasets.items()} == {"train": 48, "val": 16, "test": 16}
    dm = MedMNISTDataModule("pathmnist", path=str(synthetic_npz("pathmnist")), subsample={"train": 1000})
    with pytest.raises(ValueError, match="outside 1..48"):
        dm.setup("fit")


# ------------------------------------------------------------------------------------------------- bad input
def test_unknown_flag() -> None:
    with pytest.raises(ValueError, match="Unknown 2D MedMNIST flag 'pneumonia'.*pneumoniamnist"):
        MedMNISTDataModule("pneumonia")


def test_3d_flag_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown 2D MedMNIST flag 'organmnist3d'"):
        MedMNISTDataModule("organmnist3d")


def test_unknown_size() -> None:
    with pytest.raises(ValueError, match=r"no size 32 .*\(28, 64, 128, 224\)"):
        MedMNISTDataModule("pneumoniamnist", size=32)


def test_missing_file_offline_says_what_where(tmp_path) -> None:
    spec = MedMNISTSpec("breastmnist", 128)
    with pytest.raises(MedMNISTFileError) as err:
        MedMNISTDataModule("breastmnist", size=128, root=str(tmp_path))
    message = str(err.value)
    for part in ("breastmnist_128.npz", str(tmp_path), spec.url, spec.md5):
        assert part in message


def test_download_failure_explains(tmp_path) -> None:
    """Offline (as here) the download fails; online it fetches. Either way nothing half-written is accepted."""
    dm = MedMNISTDataModule("breastmnist", size=64, root=str(tmp_path), download=True)
    try:
        dm.prepare_data()
    except MedMNISTFileError as err:
        assert "breastmnist_64.npz" in str(err) and MedMNISTSpec("breastmnist", 64).md5 in str(err)
    else:  # online: the file arrived and passed the MD5 check inside torchvision's downloader
        dm.setup("fit")
        assert dm.md5 == MedMNISTSpec("breastmnist", 64).md5


def test_md5_mismatch(synthetic_npz, tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    synthetic_npz("pneumoniamnist").rename(root / "pneumoniamnist.npz")
    dm = MedMNISTDataModule("pneumoniamnist", root=str(root))
    with pytest.raises(MedMNISTFileError, match="MD5 mismatch.*expected 28209eda62fecd6e6a2d98b1501bb15f"):
        dm.setup("fit")


def test_wrong_keys(tmp_path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros((4, 1), np.uint8))
    with pytest.raises(MedMNISTFileError, match="lacks keys"):
        MedMNISTDataModule("pneumoniamnist", path=str(path)).setup("fit")


def test_wrong_shape(synthetic_npz) -> None:
    path = synthetic_npz("pneumoniamnist", 64)  # a 64 px file read as 28 px
    with pytest.raises(MedMNISTFileError, match=r"train_images has dtype uint8 and shape \(48, 64, 64\)"):
        MedMNISTDataModule("pneumoniamnist", 28, path=str(path)).setup("fit")


def test_wrong_channels(synthetic_npz) -> None:
    path = synthetic_npz("pathmnist")  # RGB file read as a grey-scale dataset
    with pytest.raises(MedMNISTFileError, match="needs uint8 \\(N, 28, 28\\)"):
        MedMNISTDataModule("pneumoniamnist", path=str(path)).setup("fit")


def test_labels_out_of_range(synthetic_npz) -> None:
    path = synthetic_npz("pathmnist")  # 9 classes read as a 7-class dataset
    with pytest.raises(MedMNISTFileError, match="outside the 7 classes"):
        MedMNISTDataModule("dermamnist", path=str(path)).setup("fit")


def test_not_an_npz(tmp_path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(MedMNISTFileError, match="not a readable .npz"):
        MedMNISTDataModule("pneumoniamnist", path=str(path)).setup("fit")


def test_missing_user_path(tmp_path) -> None:
    with pytest.raises(MedMNISTFileError, match="does not exist"):
        MedMNISTDataModule("pneumoniamnist", path=str(tmp_path / "nope.npz"))


def test_single_label_labels_of_shape_n_are_accepted(tmp_path, synthetic_npz) -> None:
    """Issue 9.26: (N,) labels, a common way to save single-label files, are read as MedMNIST's (N, 1); shapes that
    are really wrong are still refused, saying what is expected."""
    with np.load(synthetic_npz("pathmnist")) as npz:
        arrays = dict(npz)
    flat = {k: (v.reshape(-1) if k.endswith("_labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "flat.npz", **flat)
    dm = MedMNISTDataModule("pathmnist", path=str(tmp_path / "flat.npz"))
    dm.setup("fit")
    assert torch.equal(
        dm.datasets["train"].labels, torch.from_numpy(arrays["train_labels"].reshape(-1).astype(np.int64))
    )
    bad = {**arrays, "train_labels": arrays["train_labels"].reshape(-1)[:-1]}
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(MedMNISTFileError, match=r"expected \(48, 1\) or \(48,\)"):
        MedMNISTDataModule("pathmnist", path=str(tmp_path / "bad.npz")).setup("fit")
    with np.load(synthetic_npz("chestmnist")) as npz:
        multi = {k: (v[:, 0] if k.endswith("_labels") else v) for k, v in npz.items()}
    np.savez(tmp_path / "multi.npz", **multi)
    with pytest.raises(MedMNISTFileError, match=r"expected \(48, 14\)"):
        MedMNISTDataModule("chestmnist", path=str(tmp_path / "multi.npz")).setup("fit")


def test_root_is_a_search_path(tmp_path, real_root, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9.19: MEDMNIST_ROOT may list folders; the first holding the file wins, and a missing file is named
    with every folder searched and the one to put it in (the last, where a download would go)."""
    empty = tmp_path / "empty"
    monkeypatch.setenv("MEDMNIST_ROOT", f"{empty}{os.pathsep}{real_root}")
    assert MedMNISTDataModule("breastmnist").file == real_root / "breastmnist.npz"
    with pytest.raises(MedMNISTFileError) as err:
        MedMNISTDataModule("breastmnist", size=64, root=f"{real_root}{os.pathsep}{empty}")
    assert f"not found in {real_root}, {empty}" in str(err.value)
    assert f"save it as {empty / 'breastmnist_64.npz'}" in str(err.value)


def test_relative_environment_paths_are_resolved_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9.17: a relative MEDMNIST_ROOT means the folder it was given in, for every subprocess whatever its own
    working directory (benchmark scripts run from benchmarks/)."""
    from medrobust.datamodules.files import absolutize_env_paths

    monkeypatch.chdir(tmp_path)
    env = {"MEDMNIST_ROOT": f"data{os.pathsep}~/x", "MEDROBUST_CACHE": "cache"}
    absolutize_env_paths(env)
    assert env["MEDMNIST_ROOT"] == f"{tmp_path / 'data'}{os.pathsep}{Path('~/x').expanduser()}"
    assert env["MEDROBUST_CACHE"] == str(tmp_path / "cache")


def test_class_balanced_sampler(synthetic_npz, tmp_path) -> None:
    """Issue 9.24: sampler='balanced' draws each class about equally often from an imbalanced split."""
    with np.load(synthetic_npz("pneumoniamnist", n=(400, 16, 16))) as npz:
        arrays = dict(npz)
    arrays["train_labels"] = (np.arange(400) < 40).astype(np.uint8).reshape(-1, 1)  # 10% class 1
    np.savez(tmp_path / "imbalanced.npz", **arrays)
    dm = MedMNISTDataModule("pneumoniamnist", path=str(tmp_path / "imbalanced.npz"), sampler="balanced", batch_size=400)
    dm.setup("fit")
    torch.manual_seed(0)
    _, y = next(iter(dm.train_dataloader()))
    assert len(y) == 400 and 0.4 < float(y.float().mean()) < 0.6
    with pytest.raises(ValueError, match="one class per sample"):
        MedMNISTDataModule("chestmnist", path=str(synthetic_npz("chestmnist")), sampler="balanced")


def test_a_failed_download_creates_no_folder(tmp_path) -> None:
    """Issue 24.5: a mistyped root (offline, or a download that fails) is never created: the file is fetched into a
    temporary folder and moved into the root only when whole. Port 9 on loopback refuses the connection at once."""
    from medrobust.datamodules.files import download

    class Unreachable(MedMNISTSpec):
        @property
        def url(self) -> str:
            return "http://127.0.0.1:9/pneumoniamnist.npz"

    root = tmp_path / "mistyped" / "root"
    with pytest.raises(MedMNISTFileError, match="download failed"):
        download(Unreachable("pneumoniamnist"), [root])
    assert not (tmp_path / "mistyped").exists()
