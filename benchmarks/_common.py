"""Shared set-up for the benchmark scripts: where the data comes from."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument(
        "--root",
        default=os.environ.get("MEDMNIST_ROOT") or (str(SHARED) if SHARED.is_dir() else None),
        help="folder with the official file; a synthetic stand-in is written when it is missing",
    )
    parser.add_argument("--batch-size", type=int, default=128)


def data_root(args: argparse.Namespace) -> tuple[str, bool]:
    """(root, real): the official file's folder, or a temporary one holding a synthetic file of the same name."""
    from datamodules.files import MedMNISTSpec

    spec = MedMNISTSpec(args.flag, args.size)
    if args.root and (Path(args.root) / spec.filename).is_file():
        return args.root, True
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_medmnist_npz

    root = tempfile.mkdtemp(prefix="medrobust-bench-")
    write_medmnist_npz(Path(root) / spec.filename, args.flag, args.size, n=(4096, 512, 512))
    return root, False
