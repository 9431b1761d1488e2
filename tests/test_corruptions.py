"""Corruptions: deterministic per seed, dtype/range/shape kept, stronger with severity, matching MedMNIST-C."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_MEDMNIST, write_medmnist_npz

from medrobust.datamodules.corruptions import SEVERITIES, corrupt, corruptions_for


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> torch.Tensor:
    """200 real PneumoniaMNIST test images when present, else synthetic ones: uint8 (N, 1, 28, 28)."""
    path = SHARED_MEDMNIST / "pneumoniamnist.npz"
    if not path.is_file():
        path = write_medmnist_npz(tmp_path_factory.mktemp("c") / "p.npz", "pneumoniamnist", n=(8, 8, 200))
    with np.load(path) as npz:
        return torch.from_numpy(npz["test_images"][:200]).unsqueeze(1)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> torch.Tensor:
    path = write_medmnist_npz(tmp_path_factory.mktemp("c") / "d.npz", "dermamnist", size=64, n=(8, 8, 16))
    with np.load(path) as npz:
        return torch.from_numpy(npz["test_images"]).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", corruptions_for("pneumoniamnist"))
def test_every_pneumonia_corruption_keeps_dtype_range_shape_and_is_seeded(grey, name) -> None:
    out = corrupt(grey, "pneumoniamnist", name, 3, seed=7)
    assert out.dtype == torch.uint8 and out.shape == grey.shape
    assert torch.equal(out, corrupt(grey, "pneumoniamnist", name, 3, seed=7))
    if name in ("gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise"):
        assert not torch.equal(out, corrupt(grey, "pneumoniamnist", name, 3, seed=8))


@pytest.mark.parametrize("name", [*corruptions_for("dermamnist"), "saturate@pathmnist", "bubble@pathmnist"])
def test_rgb_corruptions(rgb, name) -> None:
    name, _, flag = name.partition("@")
    flag = flag or "dermamnist"
    out = corrupt(rgb, flag, name, 2)
    assert out.dtype == torch.uint8 and out.shape == rgb.shape
    assert torch.equal(out, corrupt(rgb, flag, name, 2))
    strengths = [strength(rgb, corrupt(rgb, flag, name, s)) for s in (1, 5)]
    assert strengths[0] > 0 or name == "black_corner"  # severity 1 keeps the inscribed disk and its corners


def strength(clean: torch.Tensor, out: torch.Tensor) -> float:
    return float((out.float() - clean.float()).abs().mean())


# One corruption per family, with the image statistic that must grow with severity.
@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("pneumoniamnist", "gaussian_noise"),  # noise
        ("pneumoniamnist", "gaussian_blur"),  # blur
        ("pneumoniamnist", "jpeg_compression"),  # digital
        ("pneumoniamnist", "brightness_down"),  # color
        ("pneumoniamnist", "gamma_corr_up"),  # task-specific
        ("breastmnist", "motion_blur"),  # blur, randomly oriented
    ],
)
def test_stronger_with_severity(grey, flag, name) -> None:
    strengths = [strength(grey, corrupt(grey, flag, name, s)) for s in SEVERITIES]
    assert all(a < b for a, b in itertools.pairwise(strengths)), strengths
    assert strengths[0] > 0


def test_blur_and_contrast_families_reduce_local_variation(grey) -> None:
    def tv(x: torch.Tensor) -> float:
        return float((x[..., 1:, :].float() - x[..., :-1, :].float()).abs().mean())

    tvs = [tv(corrupt(grey, "pneumoniamnist", "gaussian_blur", s)) for s in SEVERITIES]
    assert tvs == sorted(tvs, reverse=True) and tvs[-1] < tv(grey)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "fog"}, r"'fog' is unknown. Valid corruptions for pneumoniamnist: \['pixelate'"),
        ({"name": "saturate"}, "does not apply to pneumoniamnist's modality"),
        ({"name": "gaussian_noise", "severity": 6}, r"outside 1..5"),
        ({"name": "gaussian_noise", "severity": 0}, r"outside 1..5"),
        ({"name": "stain_deposit"}, "does not apply to pneumoniamnist's modality"),
        ({"name": "gaussian_noise", "flag": "organmnist3d"}, "defines no corruptions"),
    ],
)
def test_bad_input_lists_valid_choices(grey, kwargs, match) -> None:
    args = {"flag": "pneumoniamnist", "severity": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        corrupt(grey, args["flag"], args["name"], args["severity"])


# ----------------------------------------------------------------------------- against MedMNIST-C's reference
#: MedMNIST-C 0.1.0's outputs on fixed inputs, made by tests/reference/make_golden.py (it pins medmnist 3.0.1, so it
#: cannot be installed beside us); the first 200 real PneumoniaMNIST test images are stored with them
GOLDEN = Path(__file__).parent / "reference" / "golden.npz"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as npz:
        return dict(npz)


DETERMINISTIC = [
    "brightness_up",
    "brightness_down",
    "contrast_up",
    "contrast_down",
    "gamma_corr_up",
    "gamma_corr_down",
    "pixelate",
    "jpeg_compression",
]
NOISE = ["gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise"]


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("name", DETERMINISTIC + NOISE)
def test_statistics_match_medmnist_c(golden, name, severity) -> None:
    grey = torch.from_numpy(golden["grey"])
    key = f"medmnistc/{name}/{severity}"
    ours = corrupt(grey, "pneumoniamnist", name, severity)
    if name in DETERMINISTIC:
        # Same operation; JPEG encoders and PIL's integer arithmetic differ by a level here and there.
        tolerance = 2.0 if name == "jpeg_compression" else 1.0
        ref = torch.from_numpy(golden[key])
        assert strength(ref, ours) <= tolerance, (name, strength(ref, ours))
    # Noise is random: compare how far each moves the image, and the spread of the change.
    ours_strength, ref_strength = strength(grey, ours), float(golden[key + "/strength"])
    assert ours_strength == pytest.approx(ref_strength, rel=0.15, abs=0.3), (ours_strength, ref_strength)
    ours_std = float((ours.float() - grey.float()).std())
    assert ours_std == pytest.approx(float(golden[key + "/std"]), rel=0.15, abs=0.3)


# ------------------------------------------------------------------------------ stains and characters (RGB)
OCCLUSIONS = [("pathmnist", "stain_deposit"), ("bloodmnist", "stain_deposit"), ("dermamnist", "characters")]


def rgb_at(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """The RGB images resized to ``size`` px, bright enough that dark stains and coloured text show."""
    x = torch.nn.functional.interpolate(rgb.float(), size=size, mode="bilinear", align_corners=False)
    return (x * 0.5 + 120).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize(("flag", "name"), OCCLUSIONS)
def test_occlusions_are_seeded_and_stronger_with_severity(rgb, flag, name) -> None:
    x = rgb_at(rgb, 64)
    out = corrupt(x, flag, name, 3, seed=1)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, corrupt(x, flag, name, 3, seed=1))
    assert not torch.equal(out, corrupt(x, flag, name, 3, seed=2))
    strengths = [strength(x, corrupt(x, flag, name, s)) for s in SEVERITIES]
    assert strengths[0] < strengths[2] < strengths[4], strengths
    if name == "stain_deposit":
        assert bool((corrupt(x, flag, name, 5).float() <= x.float() + 0.5).all())  # ink only darkens


@pytest.mark.parametrize(("flag", "name"), OCCLUSIONS)
def test_occlusions_cover_the_same_fraction_at_every_size(rgb, flag, name) -> None:
    at = {size: strength(rgb_at(rgb, size), corrupt(rgb_at(rgb, size), flag, name, 4)) for size in (28, 64, 224)}
    assert at[28] == pytest.approx(at[224], rel=0.2) and at[64] == pytest.approx(at[224], rel=0.2), at


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize(("flag", "name"), OCCLUSIONS)
def test_occlusions_match_medmnist_c(golden, rgb, flag, name, severity) -> None:
    x = rgb_at(rgb.repeat(4, 1, 1, 1), 224)  # 64 images at MedMNIST-C's own size
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == str(golden["medmnistc/occlusion_inputs_sha256"])
    ours = strength(x, corrupt(x, flag, name, severity))
    ref = float(golden[f"medmnistc/{flag}/{name}/{severity}/strength"])
    # Random placement, counts and (for characters) glyphs and colours: compare the mean change per pixel.
    assert ours == pytest.approx(ref, rel=0.3), (ours, ref)


def test_golden_inputs_are_the_real_images() -> None:
    """The stored inputs are the first 200 real PneumoniaMNIST test images (where the real file is here)."""
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip("no real PneumoniaMNIST here to compare with")
    with np.load(GOLDEN) as golden, np.load(SHARED_MEDMNIST / "pneumoniamnist.npz") as real:
        assert np.array_equal(golden["grey"][:, 0], real["test_images"][:200])
