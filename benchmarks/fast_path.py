"""The fast path against fp32: bf16 autocast, channels-last and torch.compile, for clean and PGD-AT training steps.

Every configuration trains the same model on the same data with ``medrobust``'s Trainer, the way a config sets it
(``trainer.precision: bf16-mixed``, ``model.channels_last: true``, ``model.compile: true``); PGD-AT's inner attack runs
inside the same precision context, so it inherits the setting. Rounds alternate between configurations. Goal: at
least 1.5x fp32's speed for clean training of the v2 recipe's network (small-input ResNet-18 at 28 px). The test of
equal accuracy is ``tests/test_fast_path.py`` (the quickstart's test AUROC, fp32 against bf16).

    python benchmarks/fast_path.py                          # small-input ResNet-18, PneumoniaMNIST, batch 128
    python benchmarks/fast_path.py --imagenet-stem          # the quickstart's network (timm's ImageNet stem)
    python benchmarks/fast_path.py --compile                # also time torch.compile (its first steps compile)
    python benchmarks/fast_path.py --model test_resnet --steps 1 --warmup 1 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import add_data_args, add_timing_args, training_datamodule
from adversarial_step import step_time

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.datamodules.medmnist import MedMNISTDataModule

CONFIGS = {
    "fp32": ("32-true", {}),
    "bf16": ("bf16-mixed", {}),
    "bf16+channels_last": ("bf16-mixed", {"channels_last": True}),
    "bf16+channels_last+compile": ("bf16-mixed", {"channels_last": True, "compile": True}),
}


def config_step_time(dm: MedMNISTDataModule, args: argparse.Namespace, config: str, pgd_steps: int) -> float:
    precision, options = CONFIGS[config]
    small = args.model != "test_resnet" and not args.imagenet_stem
    callback = AdversarialTraining("pgd", steps=pgd_steps) if pgd_steps else None
    return step_time(dm, args, callback, precision, small_input=small, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_timing_args(parser, steps=6, warmup=2)
    parser.add_argument("--pgd-steps", type=int, default=3, help="PGD-AT inner steps (0: clean steps only)")
    parser.add_argument("--imagenet-stem", action="store_true", help="timm's ImageNet stem (the quickstart's network)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on a CPU)")
    args = parser.parse_args()
    dm, real = training_datamodule(args)
    configs = [c for c in CONFIGS if args.compile or "compile" not in c]
    kinds = {"clean": 0} | ({f"pgd-{args.pgd_steps}": args.pgd_steps} if args.pgd_steps else {})
    times = {(kind, c): [] for kind in kinds for c in configs}
    for _ in range(args.rounds):
        for kind, k in kinds.items():
            for config in configs:
                times[kind, config].append(config_step_time(dm, args, config, k))
    stem = "ImageNet stem" if args.imagenet_stem or args.model == "test_resnet" else "small_input"
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), model {args.model} ({stem}), "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'step':<8} {'configuration':<28} {'ms/step':>9} {'ratio':>6} {'speed-up':>9}   goal (clean): >= 1.50x")
    for kind in kinds:
        base = statistics.median(times[kind, "fp32"])
        for config in configs:
            t = statistics.median(times[kind, config])
            print(f"{kind:<8} {config:<28} {1e3 * t:9.1f} {t / base:6.2f} {base / t:8.2f}x")


if __name__ == "__main__":
    main()
