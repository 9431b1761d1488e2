"""Data path: MedMNISTDataModule's loader vs the medmnist Dataset + DataLoader route, one training epoch each.

The medmnist route is what most scripts do: ``PneumoniaMNIST(split="train", transform=ToTensor())`` and a
``DataLoader`` with the default collate, same batch size and shuffling. Both yield float images in [0, 1].

    python benchmarks/data_path.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from _common import add_data_args, data_source
from torch.utils.data import DataLoader

from medrobust.datamodules.files import MedMNISTSpec
from medrobust.datamodules.medmnist import MedMNISTDataModule


def epoch_time(loader: DataLoader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    source, root, real = data_source(args)

    import medmnist
    from torchvision import transforms

    spec = MedMNISTSpec(args.flag, args.size)
    start = time.perf_counter()
    reference = getattr(medmnist, spec.info["python_class"])(
        split="train", root=root, size=args.size, transform=transforms.ToTensor()
    )
    ref_setup = time.perf_counter() - start
    start = time.perf_counter()
    dm = MedMNISTDataModule(args.flag, args.size, **source, batch_size=args.batch_size)
    dm.setup("fit")
    ours_setup = time.perf_counter() - start

    ref_loader = DataLoader(reference, batch_size=args.batch_size, shuffle=True)
    ours, theirs = [], []
    for _ in range(args.rounds):
        t, n_ref = epoch_time(ref_loader)
        theirs.append(t)
        t, n_ours = epoch_time(dm.train_dataloader())
        ours.append(t)
    assert n_ref == n_ours, (n_ref, n_ours)
    o, r = statistics.median(ours), statistics.median(theirs)
    x_ours, _ = next(iter(dm.train_dataloader()))
    x_ref, _ = next(iter(ref_loader))
    assert x_ours.dtype == x_ref.dtype == torch.float32 and x_ours.shape[1:] == x_ref.shape[1:]
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), {n_ours} train images, "
        f"batch {args.batch_size}, {args.rounds} rounds"
    )
    print(f"medmnist Dataset + DataLoader: {r * 1e3:8.1f} ms/epoch  (setup {ref_setup * 1e3:.0f} ms, no MD5 check)")
    print(f"MedMNISTDataModule loader    : {o * 1e3:8.1f} ms/epoch  (setup {ours_setup * 1e3:.0f} ms, MD5 checked)")
    print(f"ratio framework / medmnist route (epoch): {o / r:.3f}   ({r / o:.0f}x faster)")


if __name__ == "__main__":
    main()
