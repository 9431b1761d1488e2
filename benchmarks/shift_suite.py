"""Building the full shift suite of a test split: cold (computed) vs cached rebuild, timed in one run.

python benchmarks/shift_suite.py                      # PneumoniaMNIST: 13 corruptions x 5 severities
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
from _common import add_data_args, data_source

from medrobust.datamodules.medmnist import MedMNISTDataModule


def build(args: argparse.Namespace, source: dict[str, str], cache: str) -> tuple[float, MedMNISTDataModule]:
    dm = MedMNISTDataModule(args.flag, args.size, **source, shifts=["corruptions"], cache_dir=cache)
    dm.setup("fit")  # the clean splits, not timed
    start = time.perf_counter()
    dm.setup("test")
    return time.perf_counter() - start, dm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    source, _, real = data_source(args)
    with tempfile.TemporaryDirectory() as cache:
        cold, dm = build(args, source, cache)
        warm, again = build(args, source, cache)
    same = all(torch.equal(dm.shifted[k].images, again.shifted[k].images) for k in dm.shifted)
    n = len(dm.datasets["test"])
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), {n} test images, "
        f"{len(dm.shifted)} shifted splits ({n * len(dm.shifted)} corrupted images), {torch.get_num_threads()} threads"
    )
    print(f"cold build   : {cold:8.2f} s")
    print(f"cached build : {warm:8.3f} s   (identical: {same})")
    print(f"ratio cached / cold: {warm / cold:.4f}")


if __name__ == "__main__":
    main()
