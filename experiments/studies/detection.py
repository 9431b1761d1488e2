"""Mahalanobis detection of OOD and adversarial inputs (../shared/SCIENCE.md, section 2), in one command.

1. Runs the sweep ``experiments/sweeps/pneumonia_detection_cpu.yaml``: a standard and a PGD-AT ResNet-18 on real
   PneumoniaMNIST, 2 seeds each, each tested by ``medrobust.callbacks.DetectionEvaluation``.
2. Reads every child's ``detection.json`` and writes ``detection_study.json`` and ``plots/detection_study.png``
   (AUROC per target and detector, mean and std over seeds, one panel per arm) into the sweep's parent run.
3. Prints the table: per arm, target and detector, AUROC and TNR at 95% TPR (in-distribution positive), mean +- std
   over seeds, and whether Mahalanobis (best layer, chosen on validation) and the ensemble beat MSP.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.detection
    python -m medrobust.experiments.studies.detection --report-only        # the table again, from MLflow
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from mlflow import MlflowClient

from medrobust.experiments.reporting.seed_statistics import interval, paired_difference, show, show_difference
from medrobust.experiments.studies.study_runs import open_store, parent_run, publish, study_parser
from medrobust.experiments.sweeping.sweep import sweep_main
from medrobust.experiments.sweeping.sweep_store import child_runs
from medrobust.lightning_modules.attacks.threat import parse_eps
from medrobust.lightning_modules.detection import DETECTORS

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "sweeps" / "pneumonia_detection_cpu.yaml"
EXPERIMENT, SWEEP_NAME = "pneumonia_detection", "pneumonia_detection_cpu"
METRICS = ("auroc", "tnr_at_tpr95", "detection_acc", "n_out")


def arm(run) -> str:
    return "standard" if parse_eps(run.data.params.get("callbacks.AdversarialTraining.eps", "0")) == 0 else "pgd_at"


def load_reports(client: MlflowClient, experiment_id: str, parent_id: str) -> list[tuple[str, float, dict]]:
    out = []
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status != "FINISHED":
            continue
        path = client.download_artifacts(run.info.run_id, "detection.json")
        report = json.loads(Path(path).read_text())
        out.append((arm(run), float(run.data.params.get("seed_everything", "nan")), report))
    return out


def table(reports: list[tuple[str, float, dict]]) -> dict:
    cells: dict = {}
    for name, seed, report in reports:
        for detector, targets in report["table"].items():
            for target, metrics in targets.items():
                cell = cells.setdefault(name, {}).setdefault(target, {}).setdefault(detector, {"seeds": []})
                cell["seeds"].append(seed)
                for metric in METRICS:
                    if metric in metrics:
                        cell.setdefault(metric, []).append(metrics[metric])
                        cell.setdefault("_by_seed", {}).setdefault(metric, {})[seed] = metrics[metric]
        cells.setdefault(name, {}).setdefault("_calibration", []).append(
            {"seed": seed, **{k: report["calibration"].get(k) for k in ("noise", "best_layer")}}
        )
    for targets in cells.values():
        for target, detectors in targets.items():
            if target == "_calibration":
                continue
            for cell in detectors.values():
                by_seed = cell.pop("_by_seed", {})
                for metric in METRICS:
                    values = cell.get(metric, [])
                    if values:
                        cell[metric] = interval(values) | {
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "values": values,
                            "by_seed": by_seed.get(metric, {}),
                        }
    return cells


def paired_arms(result: dict) -> dict[str, dict]:
    """PGD-AT against standard training, per target and detector: the AUROC difference paired by seed."""
    out: dict[str, dict] = {}
    robust, standard = result.get("pgd_at", {}), result.get("standard", {})
    for target, detectors in robust.items():
        if target == "_calibration" or target not in standard:
            continue
        for detector, cell in detectors.items():
            theirs = standard[target].get(detector, {})
            if "auroc" in cell and "auroc" in theirs:
                diff = paired_difference(cell["auroc"]["by_seed"], theirs["auroc"]["by_seed"])
                out[f"pgd_at-standard/{target}/{detector}"] = diff
    return out


def inverted(auroc: float) -> bool:
    """An AUROC below chance: the score orders outliers above in-distribution samples (flagged, never hidden)."""
    return bool(np.isfinite(auroc) and auroc < 0.5)


def figure(result: dict) -> plt.Figure:
    arms = [a for a in ("standard", "pgd_at") if a in result]
    fig, axes = plt.subplots(1, len(arms), figsize=(7 * len(arms), 4), squeeze=False)
    for ax, name in zip(axes[0], arms, strict=True):
        targets = [t for t in result[name] if t != "_calibration"]
        width = 0.8 / len(DETECTORS)
        for i, detector in enumerate(DETECTORS):
            cells = [result[name][t].get(detector, {}).get("auroc", {}) for t in targets]
            means = [c.get("mean", np.nan) for c in cells]
            stds = [c.get("std", 0.0) for c in cells]
            xs = np.arange(len(targets)) + (i - (len(DETECTORS) - 1) / 2) * width
            bars = ax.bar(xs, means, width, yerr=stds, capsize=2, label=detector)
            for bar, mean in zip(bars, means, strict=True):
                if inverted(mean):  # below chance: the score ranks the outliers as more in-distribution
                    bar.set_hatch("//")
                    ax.annotate("inv", (bar.get_x() + bar.get_width() / 2, mean), ha="center", va="bottom", fontsize=6)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("detection AUROC (mean +- std over seeds)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle("Detecting OOD, corrupted and adversarial inputs: PneumoniaMNIST in-distribution")
    fig.tight_layout()
    return fig


def print_table(result: dict) -> None:
    for name in ("standard", "pgd_at"):
        if name not in result:
            continue
        print(f"\n{name}: calibration {result[name]['_calibration']}")
        print("| target | " + " | ".join(DETECTORS) + " | n_out |")
        print("|---|" + "---|" * (len(DETECTORS) + 1))
        for target, detectors in result[name].items():
            if target == "_calibration":
                continue
            row = []
            for detector in DETECTORS:
                a, t = detectors.get(detector, {}).get("auroc"), detectors.get(detector, {}).get("tnr_at_tpr95")
                flag = " INVERTED" if a and inverted(a["mean"]) else ""
                row.append(f"{show(a)} ({t['mean']:.2f}){flag}" if a and t else "-")
            n = detectors.get("msp", {}).get("n_out", {}).get("values", [])
            print(f"| {target} | " + " | ".join(row) + f" | {'/'.join(str(int(v)) for v in n)} |")
    print(
        "\ncells: AUROC mean [95% t interval] (n seeds) (TNR at 95% TPR, in-distribution positive); INVERTED "
        "(hatched, 'inv' in the figure): AUROC below 0.5, the detector ranks the outliers as more in-distribution "
        "than the test images"
    )


def main() -> int:
    args = study_parser(__doc__).parse_args()
    uri, client = open_store(args)
    if not args.report_only:
        code = sweep_main([str(SWEEP), "--tracking-uri", uri])
        if code:
            return code
    experiment_id, parent_id = parent_run(client, EXPERIMENT, SWEEP_NAME)
    result = table(load_reports(client, experiment_id, parent_id))
    paired = paired_arms(result)
    payload = result | {"_paired": paired}
    publish(client, parent_id, "detection_study.json", payload, {"plots/detection_study.png": figure(result)})
    print_table(result)
    print("\nPGD-AT against standard training, AUROC paired by seed (a difference only where the interval excludes 0):")
    for comparison, diff in paired.items():
        print(f"  {comparison}: {show_difference(diff)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
