"""Cost of one feature-distillation training step relative to a standard step, measured in one run.

A distilled step adds one teacher forward (no grad) and the terms' heads; the goal is at most 1.5x a standard step
for a same-size teacher (a forward is about a third of a training step). Configurations: the shortcut study's
(probe KL at layer2-4 + logit KD) and feature matching through an adapter (MSE at layer3). Rounds alternate.

    python benchmarks/distillation_step.py                  # resnet18 student and teacher, PneumoniaMNIST, batch 128
    python benchmarks/distillation_step.py --model test_resnet --steps 2 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import add_data_args, add_timing_args, print_ratios, training_datamodule
from adversarial_step import step_time
from lightning.pytorch import Trainer

from medrobust.callbacks.feature_distillation import FeatureDistillation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule

GOAL = 1.5


def make_teacher(dm: MedMNISTDataModule, model: str, folder: Path) -> Path:
    """A teacher checkpoint (one training step is enough for timing)."""
    teacher = ClassifierModule(model, dm.num_classes, dm.in_chans, dm.task)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(teacher, dm)
    trainer.save_checkpoint(folder / "teacher.ckpt")
    return folder / "teacher.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_timing_args(parser, steps=10, warmup=2)
    args = parser.parse_args()
    dm, real = training_datamodule(args)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = str(make_teacher(dm, args.model, Path(tmp)))
        probes = [{"student": f"layer{i}", "loss": "probe_kl"} for i in (2, 3, 4)]
        configs = {
            "standard": lambda: None,
            "probe_kl x3 + KD": lambda: FeatureDistillation(teacher, probes, logit_weight=1.0, probe_data="student"),
            "mse layer3": lambda: FeatureDistillation(teacher, [{"student": "layer3", "loss": "mse"}]),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, make in configs.items():
                times[name].append(step_time(dm, args, make()))
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), student and teacher {args.model}, "
        f"batch {args.batch_size}, {args.steps} timed steps, {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    print_ratios(times, dict.fromkeys(configs, GOAL), "configuration")


if __name__ == "__main__":
    main()
