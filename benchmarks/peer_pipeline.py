"""medrobust against the pipeline a MedMNIST user would otherwise run, on the same data, model, batch size and epochs.

The peer is MedMNIST's own ``MedMNIST2D/train_and_eval_pytorch.py`` (github.com/MedMNIST/experiments). Its loop is
written out here (not copied): the ``medmnist`` Dataset with PIL ``ToTensor`` + ``Normalize(0.5, 0.5)`` transforms, a
``DataLoader`` without workers, Adam 1e-3 with ``MultiStepLR`` at 50% and 75% of the epochs, a tensorboardX scalar per
iteration and per epoch, and every epoch an evaluation of the train, val and test splits with ``medmnist.Evaluator``,
keeping a ``deepcopy`` of the best-val-AUC model, whose test AUC is reported. Its network, ``models.ResNet18``, is the
CIFAR-style ResNet-18, which is what ``small_input: true`` builds from timm; both sides use that timm network.

medrobust runs as ``medrobust fit`` runs the v2 recipe (``experiments/configs/medmnist_v2_resnet18.yaml``): the
CLI, the MLflow logger on a temporary SQLite store, validation every epoch, checkpoints of the selected epoch, then
the test of the best-val-AUC checkpoint in the same run; in fp32, and on the fast path (bf16 autocast, channels-last).
Rounds alternate between the pipelines. Printed: seconds per epoch (whole runs over their epochs), the ratio to the
peer, and each pipeline's test AUROC and accuracy.

    python benchmarks/peer_pipeline.py                          # PneumoniaMNIST, 2 epochs, 2 rounds
    python benchmarks/peer_pipeline.py --epochs 1 --rounds 1 --max-train 256   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import REPO, add_data_args, data_source
from mlflow import MlflowClient

from medrobust.experiments.cli import MedRobustCLI
from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier

RECIPE = REPO / "experiments" / "configs" / "medmnist_v2_resnet18.yaml"


def peer(args: argparse.Namespace, root: str) -> tuple[float, float, float]:
    """MedMNIST's train_and_eval_pytorch.py loop: ``(seconds, test AUC, test ACC)``."""
    import medmnist
    import torchvision.transforms as transforms
    from tensorboardX import SummaryWriter
    from torch.utils.data import DataLoader, Subset

    start = time.perf_counter()
    torch.manual_seed(0)
    info = medmnist.INFO[args.flag]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    data_class = getattr(medmnist, info["python_class"])
    splits = {s: data_class(split=s, transform=transform, root=root, size=args.size) for s in ("train", "val", "test")}
    train_set = splits["train"] if args.max_train is None else Subset(splits["train"], range(args.max_train))
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    eval_loaders = {s: DataLoader(d, batch_size=args.batch_size, shuffle=False) for s, d in splits.items()}
    evaluators = {s: medmnist.Evaluator(args.flag, s, size=args.size, root=root) for s in splits}
    model = NormalizedClassifier.from_timm("resnet18", len(info["label"]), info["n_channels"], small_input=True)
    model = model.backbone  # the transforms normalise
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    milestones = [0.5 * args.epochs, 0.75 * args.epochs]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    def evaluate(net: torch.nn.Module, split: str) -> tuple[float, float]:
        net.eval()
        scores = []
        with torch.no_grad():
            for x, _ in eval_loaders[split]:
                scores.append(F.softmax(net(x), 1))
        auc, acc = evaluators[split].evaluate(torch.cat(scores).numpy())
        return auc, acc

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(log_dir=str(Path(tmp) / "Tensorboard_Results"))
        best_auc, best_model, iteration = 0.0, copy.deepcopy(model), 0
        for epoch in range(args.epochs):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y.squeeze(1).long())
                writer.add_scalar("train_loss_logs", loss.item(), iteration)
                iteration += 1
                loss.backward()
                optimizer.step()
            results = {split: evaluate(model, split) for split in ("train", "val", "test")}
            scheduler.step()
            for split, (auc, acc) in results.items():
                writer.add_scalar(f"{split}_auc", auc, epoch)
                writer.add_scalar(f"{split}_acc", acc, epoch)
            if results["val"][0] > best_auc:
                best_auc, best_model = results["val"][0], copy.deepcopy(model)
        writer.close()
    auc, acc = evaluate(best_model, "test")
    return time.perf_counter() - start, auc, acc


def milestones(epochs: int) -> list[float]:
    return [m for m in (0.5 * epochs, 0.75 * epochs) if float(m).is_integer()]


def ours(args: argparse.Namespace, source: dict[str, str], fast: bool) -> tuple[float, float, float]:
    """``medrobust fit`` of the v2 recipe: ``(seconds, test AUROC, test accuracy)`` of the selected epoch."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        data = [f"--data.{key}={value}" for key, value in source.items()]
        cli_args = [
            "fit",
            f"--config={RECIPE}",
            f"--data.flag={args.flag}",
            f"--data.size={args.size}",
            f"--data.batch_size={args.batch_size}",
            "--data.num_workers=0",
            *data,
            f"--trainer.max_epochs={args.epochs}",
            f"--trainer.default_root_dir={tmp}/runs",
            f"--trainer.logger.init_args.tracking_uri={uri}",
            f"--trainer.logger.init_args.artifact_location={tmp}/artifacts",
            "--trainer.enable_progress_bar=false",
            # the peer's float milestones (0.5 and 0.75 of the epochs) only ever fire where they are whole numbers
            f"--model.lr_scheduler.init_args.milestones=[{','.join(str(int(m)) for m in milestones(args.epochs))}]",
        ]
        if args.max_train is not None:
            cli_args.append(f"--data.subsample={{train: {args.max_train}}}")
        if fast:
            cli_args += ["--trainer.precision=bf16-mixed", "--model.channels_last=true"]
        MedRobustCLI(cli_args)
        client = MlflowClient(uri)
        run = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id]))
        metrics = run.data.metrics
    return time.perf_counter() - start, metrics["test/auroc"], metrics["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=None, help="train on the first N images (smoke runs)")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    source, root, real = data_source(args)
    jobs = {
        "MedMNIST train_and_eval_pytorch.py loop": lambda: peer(args, root),
        "medrobust fit (fp32)": lambda: ours(args, source, fast=False),
        "medrobust fit (bf16 + channels_last)": lambda: ours(args, source, fast=True),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, job in jobs.items():
            results[name].append(job())
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), small-input ResNet-18 (timm), batch "
        f"{args.batch_size}, {args.epochs} epochs, {args.rounds} rounds alternating, {torch.get_num_threads()} threads"
    )
    peer_epoch = statistics.median(r[0] for r in results[next(iter(jobs))]) / args.epochs
    print(f"{'pipeline':<40} {'s/epoch':>8} {'ratio':>6} {'test AUROC (rounds)':>24} {'test ACC (rounds)':>22}")
    for name, rows in results.items():
        epoch = statistics.median(r[0] for r in rows) / args.epochs
        aurocs = ", ".join(f"{r[1]:.3f}" for r in rows)
        accs = ", ".join(f"{r[2]:.3f}" for r in rows)
        print(f"{name:<40} {epoch:8.1f} {epoch / peer_epoch:6.2f} {aurocs:>24} {accs:>22}")
    peer_auroc = np.mean([r[1] for r in results[next(iter(jobs))]])
    print(f"(ratio: seconds per epoch over the peer's; the peer's mean test AUROC {peer_auroc:.3f})")


if __name__ == "__main__":
    main()
