"""Cost of one adversarial training step relative to a standard step, per method, measured in one run.

Each method trains the same model on the same data with ``medrobust``'s Trainer; rounds alternate between methods.
Goals: PGD-k at most (k + 1) x 1.05 a standard step, TRADES with k inner steps likewise, FGSM-RS at most 2.1x.

    python benchmarks/adversarial_step.py                  # quickstart model (resnet18), PneumoniaMNIST, batch 128
    python benchmarks/adversarial_step.py --model test_resnet --steps 4 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse

import torch
from _common import add_data_args, add_timing_args, print_ratios, training_datamodule
from lightning.pytorch import Callback, Trainer
from train_step import StepTimer

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule


def step_time(
    dm: MedMNISTDataModule,
    args: argparse.Namespace,
    callback: Callback | None,
    precision: str = "32-true",
    **model_options: object,
) -> float:
    """Seconds per training step of ``args.model`` with ``callback`` (timed after ``args.warmup`` steps)."""
    torch.manual_seed(0)
    model = ClassifierModule(args.model, dm.num_classes, dm.in_chans, dm.task, **model_options)
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        callbacks=[timer] + ([callback] if callback else []),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    return (timer.end - timer.start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_timing_args(parser, steps=10, warmup=2)
    parser.add_argument("--k", type=int, nargs="+", default=[3, 7], help="PGD / TRADES inner steps to time")
    args = parser.parse_args()
    dm, real = training_datamodule(args)
    methods: dict[str, tuple[AdversarialTraining | None, float]] = {"standard": (None, 1.0)}
    for k in args.k:
        methods[f"pgd-{k}"] = (AdversarialTraining("pgd", steps=k), (k + 1) * 1.05)
        methods[f"trades-{k}"] = (AdversarialTraining("trades", steps=k), (k + 1) * 1.05)
    methods["fgsm_rs"] = (AdversarialTraining("fgsm_rs", co_guard=False), 2.1)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, (callback, _goal) in methods.items():
            times[name].append(step_time(dm, args, callback))
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), model {args.model}, "
        f"batch {args.batch_size}, {args.steps} timed steps, {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    print_ratios(times, {name: goal for name, (_callback, goal) in methods.items()}, "method")


if __name__ == "__main__":
    main()
