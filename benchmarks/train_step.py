"""Framework training step vs a hand-written PyTorch loop on the same model, data and batch size.

Both sides run the same network (timm model behind Normalize), the same loader and Adam; the framework side is a
real ``Trainer`` with ClassifierModule, the MLflow logger on a temporary SQLite store, the run recorder and the
progress bar, as ``medrobust fit`` runs it. Rounds alternate between the two so machine noise hits both alike.

    python benchmarks/train_step.py                       # quickstart model: resnet18, PneumoniaMNIST, batch 128
    python benchmarks/train_step.py --model test_resnet --steps 10 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import add_data_args, add_timing_args, training_datamodule
from lightning.pytorch import Callback, Trainer

from medrobust.callbacks.mlflow_checkpoints import MLflowCheckpoints
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.lightning_modules.classifier import ClassifierModule


class StepTimer(Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def plain_loop(dm: MedMNISTDataModule, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    net = ClassifierModule(args.model, dm.num_classes, dm.in_chans, dm.task).net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = itertools.cycle(dm.train_dataloader())
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / args.steps


def framework(dm: MedMNISTDataModule, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = ClassifierModule(args.model, dm.num_classes, dm.in_chans, dm.task)
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        logger = MLflowRunLogger("benchmark", tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_location=tmp)
        trainer = Trainer(
            accelerator="cpu",
            max_steps=args.warmup + args.steps,
            limit_val_batches=0,
            logger=logger,
            callbacks=[timer, MLflowCheckpoints()],
            enable_checkpointing=False,
            default_root_dir=tmp,
            enable_progress_bar=not args.no_progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, dm)
    return (timer.end - timer.start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_timing_args(parser, steps=30, warmup=5)
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    dm, real = training_datamodule(args)
    plain, fw = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(dm, args))
        fw.append(framework(dm, args))
    p, f = statistics.median(plain), statistics.median(fw)
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), model {args.model}, "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"plain PyTorch loop : {1e3 * p:8.2f} ms/step  (rounds: {', '.join(f'{1e3 * t:.1f}' for t in plain)})")
    print(f"medrobust Trainer  : {1e3 * f:8.2f} ms/step  (rounds: {', '.join(f'{1e3 * t:.1f}' for t in fw)})")
    print(f"ratio framework / plain (median): {f / p:.3f}   (goal <= 1.05)")


if __name__ == "__main__":
    main()
