"""Distillation against shortcuts (../shared/SCIENCE.md, section 3), on real PneumoniaMNIST or BreastMNIST, in one
command.

1. Trains one clean teacher per seed (``experiments/configs/shortcut/<dataset>_teacher_clean.yaml``: a small clean
   subset of the training split, no shortcut), run name ``teacher_clean<percent>_s<seed>``; a FINISHED teacher is
   reused.
2. Runs the sweep ``experiments/sweeps/<dataset>_shortcut_distillation_cpu.yaml`` (ERM on biased data, the same
   student distilled from the clean teacher, the clean ceiling; a localised and a diffuse shortcut; 2-3 seeds).
3. Writes the table ``shortcut_study.json`` and ``plots/shortcut_study.png`` (flipped-test AUROC and bias gap per
   arm) into the sweep's parent run, and prints the table: per shortcut and arm, mean and std over seeds, and the
   fraction of the ERM-to-ceiling gap in flipped-test AUROC that distillation closes.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.shortcut_distillation
    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.shortcut_distillation --dataset breast
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from mlflow import MlflowClient

from medrobust.experiments.reporting.seed_statistics import interval, paired_difference, show, show_difference
from medrobust.experiments.studies.study_runs import open_store, parent_run, publish, study_parser
from medrobust.experiments.sweeping.sweep import sweep_main
from medrobust.experiments.sweeping.sweep_store import child_runs

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Study:
    """One dataset's arm of the study: its teacher config, sweep, experiment and teacher run names."""

    dataset: str
    teacher_prefix: str
    seeds: tuple[int, ...]

    @property
    def sweep(self) -> Path:
        return ROOT / "sweeps" / f"{self.dataset}_shortcut_distillation_cpu.yaml"

    @property
    def teacher_config(self) -> Path:
        return ROOT / "configs" / "shortcut" / f"{self.dataset}_teacher_clean.yaml"

    @property
    def experiment(self) -> str:
        return f"{self.dataset}_shortcut"

    @property
    def sweep_name(self) -> str:
        return f"{self.dataset}_shortcut_distillation_cpu"


STUDIES = {
    "pneumonia": Study("pneumonia", "teacher_clean10", (0, 1, 2)),
    "breast": Study("breast", "teacher_clean20", (0, 1, 2)),
}
METRICS = ("flipped_auroc", "flipped_dtpr", "aligned_auroc", "absent_auroc", "absent_bal_acc")
#: carried beside the metrics: whether the flipped split's dTPR rests on a group under 30 samples, and its size
FLAGS = ("flipped_dtpr_small_group", "flipped_dtpr_min_group")
ARMS = ("erm", "distill", "clean")


def current_teacher(run) -> bool:
    """Whether a FINISHED teacher was trained as the teacher config trains it now: with the small-input stem and its
    own seed's clean subset (issue 25.9, 25.10); a teacher from before is retrained, and the newest one is the one
    ``mlflow:<experiment>/<name>`` resolves to."""
    params = run.data.params
    return params.get("model.small_input") == "True" and params.get("data.subsample_seed") in ("None", None)


def train_teachers(client: MlflowClient, study: Study, seeds: list[int], uri: str) -> None:
    experiment = client.get_experiment_by_name(study.experiment)
    for seed in seeds:
        name = f"{study.teacher_prefix}_s{seed}"
        query = f"tags.`mlflow.runName` = '{name}' and attributes.status = 'FINISHED'"
        found = client.search_runs([experiment.experiment_id], query, max_results=1) if experiment else []
        if found and current_teacher(found[0]):
            print(f"teacher {name}: FINISHED, reused")
            continue
        if found:
            print(f"teacher {name}: its FINISHED run {found[0].info.run_id} predates the current protocol; retraining")
        print(f"teacher {name}: training")
        args = ["--seed_everything", str(seed), "--trainer.logger.init_args.run_name", name]
        args += ["--trainer.logger.init_args.tracking_uri", uri]
        command = [sys.executable, "-m", "medrobust.experiments", "fit", "--config", str(study.teacher_config), *args]
        subprocess.run(command, check=True)
        experiment = client.get_experiment_by_name(study.experiment)


def arm(run) -> str:
    params = run.data.params
    if params.get("data.shortcut.train") == "False":
        return "clean"
    return "distill" if "callbacks.FeatureDistillation" in params else "erm"


def shortcut_of(params: dict[str, str]) -> str:
    """The shortcut of a child run: its kind, and for a marker at the top-left corner (where timm's ImageNet stem
    looked before training) the label of the control arm (issue 25.9)."""
    kind = params["data.shortcut.kind"]
    if kind in ("patch", "text") and params.get("data.shortcut.position", "fixed") == "fixed":
        return f"{kind}_fixed_corner_control"
    return kind


def table(client: MlflowClient, experiment_id: str, parent_id: str) -> dict:
    cells: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status != "FINISHED":
            continue
        m = run.data.metrics
        # test/*, not summary/*: the summary leaves out a gap resting on a group under 30 samples, which this
        # design (strength 0.95 on MedMNIST's test splits) always has on aligned and flipped; the table shows the
        # gap with its flag instead of dropping the column
        values = {
            f"{split}_{k}": m.get(f"test/shortcut/{split}/{k}")
            for split in ("flipped", "aligned", "absent")
            for k in ("auroc", "bal_acc", "dtpr", "dtpr_small_group", "dtpr_min_group")
        }
        values["seed"] = float(run.data.params.get("seed_everything", "nan"))
        cells.setdefault((shortcut_of(run.data.params), arm(run)), []).append(values)
    out: dict = {}
    for (kind, name), rows in sorted(cells.items()):
        entry = {"n_seeds": len(rows), "seeds": [r["seed"] for r in rows]}
        for metric in (*METRICS, *FLAGS):
            vals = [r[metric] for r in rows if r.get(metric) is not None]
            if vals:
                entry[metric] = interval(vals) | {
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "values": vals,
                    "by_seed": {r["seed"]: r[metric] for r in rows if r.get(metric) is not None},
                }
        out.setdefault(kind, {})[name] = entry
    for arms in out.values():
        # the comparison the study is about, paired by seed: distillation against ERM, and the clean ceiling
        arms["paired"] = {
            f"{a}-erm/{metric}": paired_difference(arms[a][metric]["by_seed"], arms["erm"][metric]["by_seed"])
            for a in ("distill", "clean")
            for metric in ("flipped_auroc", "flipped_dtpr")
            if metric in arms.get(a, {}) and metric in arms.get("erm", {})
        }
        if all(a in arms and "flipped_auroc" in arms[a] for a in ARMS):
            erm, distill, clean = (arms[a]["flipped_auroc"]["mean"] for a in ARMS)
            gap = clean - erm
            arms["gap_closed"] = (distill - erm) / gap if gap > 0 else None
    return out


def figure(result: dict) -> plt.Figure:
    kinds = sorted(result)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(len(kinds), 1)
    for i, kind in enumerate(kinds):
        for ax, metric, label in (
            (axes[0], "flipped_auroc", "flipped-test AUROC"),
            (axes[1], "flipped_dtpr", "bias gap dTPR (flipped)"),
        ):
            means = [result[kind].get(a, {}).get(metric, {}).get("mean", float("nan")) for a in ARMS]
            stds = [result[kind].get(a, {}).get(metric, {}).get("std", 0.0) for a in ARMS]
            xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(ARMS))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=kind)
            ax.set_xticks(range(len(ARMS)), ARMS)
            ax.set_title(label)
    axes[0].set_ylim(0, 1)
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[0].legend(title="shortcut")
    fig.suptitle("Shortcut study: mean +- std over seeds")
    fig.tight_layout()
    return fig


def main() -> int:
    parser = study_parser(__doc__)
    parser.add_argument("--dataset", choices=sorted(STUDIES), default="pneumonia")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="teacher seeds (default: the sweep's)")
    args = parser.parse_args()
    uri, client = open_store(args)
    study = STUDIES[args.dataset]
    if not args.report_only:
        train_teachers(client, study, args.seeds or list(study.seeds), uri)
        code = sweep_main([str(study.sweep), "--tracking-uri", uri])
        if code:
            return code
    experiment_id, parent_id = parent_run(client, study.experiment, study.sweep_name)
    result = table(client, experiment_id, parent_id)
    publish(client, parent_id, "shortcut_study.json", result, {"plots/shortcut_study.png": figure(result)})
    print(
        "cells: mean [95% t interval] (n seeds); differences paired by seed, called only when the interval excludes 0"
    )
    for kind, arms in result.items():
        print(f"{kind}: gap closed (flipped AUROC) = {arms.get('gap_closed')}")
        for name in ARMS:
            cell = arms.get(name, {})
            row = ", ".join(f"{m} {show(cell[m])}" for m in METRICS if m in cell)
            small = cell.get("flipped_dtpr_small_group", {}).get("mean", 0)
            groups = cell.get("flipped_dtpr_min_group", {}).get("mean")
            flag = f" [flipped dTPR rests on a group of {groups:.0f} < 30 samples]" if small and groups else ""
            print(f"  {name:8s} {row}{flag}")
        for comparison, diff in arms.get("paired", {}).items():
            print(f"  {comparison}: {show_difference(diff)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
