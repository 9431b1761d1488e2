"""Generate ``golden.npz``: the reference outputs our corruptions and JSMA are tested against, made once by the
reference libraries that cannot be installed beside our pins.

* MedMNIST-C 0.1.0 (https://github.com/francescodisalvo05/medmnistc-api, Apache-2.0) pins ``medmnist==3.0.1``
  and ``scikit-image==0.23.2``; we pin medmnist 3.0.2.
* torchattacks 3.5.1 (https://github.com/Harry24k/adversarial-attacks-pytorch, MIT), the first with JSMA, pins
  ``requests~=2.25.1``, which mlflow cannot take; we pin torchattacks 3.3.0.

Nothing of theirs is copied: this script calls their code and stores what it returns, with the inputs it was given,
so the tests are self-contained. To regenerate (from the repository root, in the test environment)::

    pip install --no-deps --target /tmp/reference medmnistc==0.1.0 torchattacks==3.5.1
    MEDMNIST_ROOT=../shared/data/medmnist PYTHONPATH=/tmp/reference:tests python tests/reference/make_golden.py

The inputs: the first 200 real PneumoniaMNIST test images (``../shared/data/medmnist``), the synthetic RGB images of
``tests/test_corruptions.py``'s ``rgb`` fixture, and the small networks of ``tests/test_min_distance.py``.
"""

from __future__ import annotations

import hashlib
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from conftest import SHARED_MEDMNIST, write_medmnist_npz
from PIL import Image
from test_corruptions import DETERMINISTIC, NOISE, OCCLUSIONS, rgb_at, strength
from test_min_distance import jsma_inputs

from medrobust.datamodules.corruptions.registry import SEVERITY_PARAMS

OUT = Path(__file__).with_name("golden.npz")


def medmnistc_grey(images: torch.Tensor, name: str, severity: int) -> torch.Tensor:
    """MedMNIST-C's own pipeline: grey -> RGB PIL, corrupt, -> L (as its DatasetManager does)."""
    from medmnistc.corruptions import compression, enhance, noise

    classes = {
        "gaussian_noise": noise.GaussianNoise,
        "speckle_noise": noise.SpeckleNoise,
        "impulse_noise": noise.ImpulseNoise,
        "shot_noise": noise.ShotNoise,
        "jpeg_compression": compression.JPEGCompression,
        "pixelate": compression.Pixelate,
        "brightness_up": enhance.Brightness,
        "brightness_down": enhance.Brightness,
        "contrast_up": enhance.Contrast,
        "contrast_down": enhance.Contrast,
        "gamma_corr_up": enhance.GammaCorrection,
        "gamma_corr_down": enhance.GammaCorrection,
    }
    corruptor = classes[name](severity_params=SEVERITY_PARAMS["pneumoniamnist"][name])
    corruptor.rng = np.random.default_rng(0)
    np.random.seed(0)
    out = []
    for img in images[:, 0].numpy():
        corrupted = corruptor.apply(Image.fromarray(img).convert("RGB"), severity - 1)
        out.append(np.array(Image.fromarray(np.asarray(corrupted, dtype=np.uint8)).convert("L")))
    return torch.from_numpy(np.stack(out)).unsqueeze(1)


def medmnistc_occlusion(images: torch.Tensor, flag: str, name: str, severity: int) -> torch.Tensor:
    """MedMNIST-C's StainDeposit / Characters on 224 px RGB images (they need room: 28 px images crash them)."""
    from medmnistc.corruptions.microscopy import Characters, StainDeposit

    params = {
        ("pathmnist", "stain_deposit"): [1, 2, 3, 4, 5],
        ("bloodmnist", "stain_deposit"): [1, 2, 3, 3, 3],
        ("dermamnist", "characters"): SEVERITY_PARAMS["dermamnist"]["characters"],
    }[(flag, name)]
    corruptor = (StainDeposit if name == "stain_deposit" else Characters)(severity_params=params)
    random.seed(0)
    np.random.seed(0)
    out = [
        np.asarray(corruptor.apply(Image.fromarray(img.permute(1, 2, 0).numpy()), severity - 1), dtype=np.uint8)
        for img in images
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def main() -> None:
    import torchattacks

    if torchattacks.__version__ != "3.5.1":
        sys.exit(f"torchattacks {torchattacks.__version__} imported; put 3.5.1 first on PYTHONPATH (see the docstring)")
    golden: dict[str, np.ndarray] = {}
    with np.load(SHARED_MEDMNIST / "pneumoniamnist.npz") as npz:
        grey = torch.from_numpy(npz["test_images"][:200]).unsqueeze(1)
    golden["grey"] = grey.numpy()
    for name in DETERMINISTIC + NOISE:
        for severity in (1, 5):
            ref = medmnistc_grey(grey, name, severity)
            key = f"medmnistc/{name}/{severity}"
            if name in DETERMINISTIC:
                golden[key] = ref.numpy()
            golden[key + "/strength"] = np.float64(strength(grey, ref))
            golden[key + "/std"] = np.float64((ref.float() - grey.float()).std())
    with tempfile.TemporaryDirectory() as tmp:
        path = write_medmnist_npz(Path(tmp) / "d.npz", "dermamnist", size=64, n=(8, 8, 16))
        with np.load(path) as npz:
            rgb = torch.from_numpy(npz["test_images"]).permute(0, 3, 1, 2).contiguous()
    x = rgb_at(rgb.repeat(4, 1, 1, 1), 224)
    # 64 images at 224 px are too large to store: their checksum says they are still the images the reference saw
    golden["medmnistc/occlusion_inputs_sha256"] = np.array(hashlib.sha256(x.numpy().tobytes()).hexdigest())
    for flag, name in OCCLUSIONS:
        for severity in (1, 5):
            ref = medmnistc_occlusion(x, flag, name, severity)
            golden[f"medmnistc/{flag}/{name}/{severity}/strength"] = np.float64(strength(x, ref))
    for classes in (2, 3):
        net, x, y = jsma_inputs(classes)
        attack = torchattacks.JSMA(net, theta=1.0, gamma=0.3)
        attack.set_mode_targeted_by_function(lambda images, labels, c=classes: (labels + 1) % c, quiet=True)
        golden[f"torchattacks/jsma/{classes}/x"] = x.numpy()
        golden[f"torchattacks/jsma/{classes}"] = attack(x, y).numpy()
    np.savez_compressed(OUT, **golden)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB, {len(golden)} arrays)")


if __name__ == "__main__":
    main()
