"""PGD-AT on an imbalanced PneumoniaMNIST, with and without the standard remedies (issue 9.24).

Writes a MedMNIST-format file whose training split keeps only ``--normal`` of the normal images (388 by default, with
all 3494 pneumonia images; validation and test splits untouched), then runs the sweep
``experiments/sweeps/pneumonia_imbalance_remedies_cpu.yaml`` on it: standard training, PGD-AT, PGD-AT with a
class-weighted loss and PGD-AT with class-balanced sampling, 2 seeds each.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.imbalanced_pneumonia
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medrobust.datamodules.files import MedMNISTSpec, absolutize_env_paths, locate, resolve_roots, verify_official
from medrobust.experiments.sweeping.sweep import sweep_main

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "pneumonia_imbalance_remedies_cpu.yaml"
OUT = Path("runs/data/pneumoniamnist_imbalanced.npz")


def write_imbalanced(out: Path, normal: int, seed: int = 0) -> Path:
    """The official file with the training split's normal class (label 0) subsampled to ``normal`` images."""
    spec = MedMNISTSpec("pneumoniamnist")
    path = locate(spec, resolve_roots(None))
    verify_official(spec, path)
    with np.load(path) as npz:
        arrays = dict(npz)
    labels = arrays["train_labels"].reshape(-1)
    rng = np.random.default_rng(seed)
    keep_normal = rng.choice(np.flatnonzero(labels == 0), size=normal, replace=False)
    keep = np.sort(np.concatenate([keep_normal, np.flatnonzero(labels == 1)]))
    arrays["train_images"], arrays["train_labels"] = arrays["train_images"][keep], arrays["train_labels"][keep]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    counts = np.bincount(arrays["train_labels"].reshape(-1), minlength=2)
    print(f"{out}: training split {counts[0]} normal / {counts[1]} pneumonia")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal", type=int, default=388, help="normal training images to keep")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    absolutize_env_paths()
    write_imbalanced(OUT, args.normal)
    return sweep_main([str(SWEEP), *(["--tracking-uri", args.tracking_uri] if args.tracking_uri else [])])


if __name__ == "__main__":
    raise SystemExit(main())
