"""Cost of ``medrobust construct`` per image, as a ratio to one training step per image, in one run.

A training step is a forward, backward and Adam step on a batch in train mode (the plain loop of
``benchmarks/train_step.py``). A construction chunk is what ``medrobust construct`` runs per batch: targeted L2 PGD
(det/rand) or representation matching (robust/nonrobust) for ``--iters`` iterations, the uint8 rounding and the
diagnostics. Rounds alternate so machine noise hits all alike. Printed: ms per image of each, the ratio to a training
step per image, and the ratio per iteration (what one attack iteration costs against one training step).

    python benchmarks/construction_cost.py                      # resnet18, PneumoniaMNIST 28 px, batch 256
    python benchmarks/construction_cost.py --iters 2 --rounds 1 --model test_resnet     # smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
import torch.nn.functional as F
from _common import add_data_args, alternate, data_source

from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.construction.construct import Settings, build_chunk
from medrobust.lightning_modules.classifier import ClassifierModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--iters", type=int, default=20, help="attack / matching iterations timed (100 / 1000 real)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.set_defaults(batch_size=256)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    source, _, real = data_source(args)
    dm = MedMNISTDataModule(args.flag, args.size, **source, batch_size=args.batch_size)
    dm.setup("fit")
    torch.manual_seed(0)
    net = ClassifierModule(args.model, dm.num_classes, dm.in_chans, dm.task).net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    train = dm.datasets["train"]
    images = train.images[: args.batch_size].float() / 255
    labels = train.labels[: args.batch_size]
    todo = {
        "index": torch.arange(len(images)),
        "targets": (labels + 1) % dm.num_classes,
        "other": torch.roll(torch.arange(len(images)), 1),
        "labels": labels,
    }

    def settings(kind: str) -> Settings:
        eps = 0.25 if kind == "det" else None
        return Settings(kind, eps, 0.05, args.iters, "l2", "image", 0, None, len(images), "bench", None, "")

    def train_step() -> None:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()

    jobs = {
        "training step": train_step,
        f"det chunk ({args.iters} iters)": lambda: build_chunk(net, settings("det"), images, todo, 0),
        f"robust chunk ({args.iters} iters)": lambda: build_chunk(net, settings("robust"), images, todo, 0),
    }
    times = alternate(jobs, args.rounds)
    n = len(images)
    base = statistics.median(times["training step"]) / n
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), batch {n}; {args.model}; "
        f"{torch.get_num_threads()} threads; median of {args.rounds} alternating rounds"
    )
    print(f"{'':<26} {'ms/image':>9} {'ratio':>8} {'ratio/iter':>10}")
    for name, values in times.items():
        per_image = statistics.median(values) / n
        iters = 1 if name == "training step" else args.iters
        print(f"{name:<26} {1e3 * per_image:9.3f} {per_image / base:8.1f} {per_image / base / iters:10.2f}")
    det = statistics.median(times[f"det chunk ({args.iters} iters)"]) / n / args.iters
    match = statistics.median(times[f"robust chunk ({args.iters} iters)"]) / n / args.iters
    print(
        f"ratio to a training step per image, at the paper's iterations: det/rand (100) {100 * det / base:.0f}x, "
        f"robust/nonrobust (1000) {1000 * match / base:.0f}x, at this study's 200: {200 * match / base:.0f}x"
    )


if __name__ == "__main__":
    main()
