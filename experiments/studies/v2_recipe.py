"""The MedMNIST v2 recipe against the paper's numbers: train it, then draw its validation curve beside them.

Runs ``medrobust fit --config experiments/configs/medmnist_v2_resnet18.yaml`` with any extra arguments (on a CPU, a
time limit and the fast path), then reads the run's history from MLflow and logs ``plots/v2_curve.png`` (validation
AUROC and accuracy per epoch, the selected epoch's test numbers, and the paper's test AUC and ACC for the dataset as
dashed lines) and ``v2_curve.json`` into the same run, and prints the table.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.v2_recipe \\
        --data.flag pneumoniamnist --trainer.max_time 00:00:20:00 --trainer.precision bf16-mixed \\
        --model.channels_last true
    python -m medrobust.experiments.studies.v2_recipe --report-only <run id>     # redraw for a finished run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from mlflow import MlflowClient

from medrobust.experiments.cli import MedRobustCLI
from medrobust.experiments.studies.study_runs import open_store, publish

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "medmnist_v2_resnet18.yaml"
#: Yang et al. 2023, Table 3, ResNet-18 (28): test (AUC, ACC)
PAPER = {
    "pneumoniamnist": (0.944, 0.854),
    "breastmnist": (0.901, 0.863),
    "pathmnist": (0.983, 0.907),
    "organamnist": (0.997, 0.935),
    "octmnist": (0.943, 0.743),
}


def curve(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    flag = run.data.params.get("data.flag", "pneumoniamnist")
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in ("val/auroc", "val/acc")
    }
    epochs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    return {
        "run_id": run_id,
        "flag": flag,
        "paper_test_auc_acc": PAPER.get(flag),
        "test_auroc": run.data.metrics.get("test/auroc"),
        "test_acc": run.data.metrics.get("test/acc"),
        "val": {k: [(int(epochs.get(step, i)), v) for i, (step, v) in enumerate(h)] for k, h in history.items()},
    }


def figure(data: dict) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    for (key, points), color in zip(data["val"].items(), ("C0", "C1"), strict=True):
        ax.plot([e + 1 for e, _ in points], [v for _, v in points], color=color, label=key)
    if data["paper_test_auc_acc"]:
        auc, acc = data["paper_test_auc_acc"]
        ax.axhline(auc, color="C0", ls="--", lw=1, label=f"paper test AUC {auc}")
        ax.axhline(acc, color="C1", ls="--", lw=1, label=f"paper test ACC {acc}")
    if data["test_auroc"] is not None:
        ax.axhline(data["test_auroc"], color="C0", ls=":", lw=1.5, label=f"our test AUROC {data['test_auroc']:.3f}")
        ax.axhline(data["test_acc"], color="C1", ls=":", lw=1.5, label=f"our test ACC {data['test_acc']:.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylim(0.5, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"MedMNIST v2 recipe, small-input ResNet-18, {data['flag']}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--report-only", metavar="RUN_ID", default=None)
    args, rest = parser.parse_known_args(argv)
    uri, client = open_store(args)
    run_id = args.report_only
    if run_id is None:
        cli = MedRobustCLI(["fit", f"--config={RECIPE}", *rest, f"--trainer.logger.init_args.tracking_uri={uri}"])
        run_id = cli.trainer.logger.run_id
    data = curve(client, run_id)
    for key, points in data["val"].items():
        print(f"{key}: " + ", ".join(f"{e + 1}:{v:.3f}" for e, v in points))
    print(f"test AUROC {data['test_auroc']}, ACC {data['test_acc']}; paper (AUC, ACC) {data['paper_test_auc_acc']}")
    publish(client, run_id, "v2_curve.json", data, {"plots/v2_curve.png": figure(data)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
