"""Generalisability against robustness across architectures (../shared/SCIENCE.md, section 4), in one command.

Six networks trained the same way (``experiments/sweeps/architectures_cpu.yaml``), 3 seeds, on real PneumoniaMNIST
and BreastMNIST, lined up by clean accuracy and AUROC with their robustness beside them: accuracy under FGSM and PGD-10
at each L-inf budget (the per-sample worst case of both), and the median minimal distances of DeepFool (L2) and JSMA
(L0). A pair of networks is **flagged** when their mean clean AUROCs are within 1 point but a robustness measure
differs: the 95% t interval of the difference paired by seed excludes 0. Each flag is a test at the 5% level on its
own; with about 15 pairs and 5 measures per dataset, a few flags are expected by chance (no multiplicity
correction), so read them as leads, not findings.

A seed whose model gives one class at least 95% of its test predictions (``summary/clean_top_pred_share``), more than
that class's share of the labels (tag ``test.near_constant``), is left out
of its network's cells and listed: a constant classifier keeps its accuracy under any attack, which is not
robustness. Only networks with two or more such seeds left take part in flags. A median distance of ``inf`` (fewer
than half the samples flipped; MLflow stores it as the largest float) reads as ``inf``.

Runs the sweep (FINISHED children are kept), then writes ``architecture_study.json`` and
``plots/architecture_study.png`` (per dataset: clean AUROC against median DeepFool distance and against worst-case
accuracy at 2/255, one point per seed) into the sweep's parent run and prints the table and the flagged pairs.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.architectures
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from mlflow import MlflowClient

from medrobust.experiments.reporting.seed_statistics import interval, paired_difference, show
from medrobust.experiments.studies.study_runs import open_store, parent_run, publish, study_parser
from medrobust.experiments.sweeping.sweep import sweep_main
from medrobust.experiments.sweeping.sweep_store import child_runs
from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.metrics.confusion import CONSTANT_SHARE
from medrobust.lightning_modules.metrics.metric_names import build_name


def _linf(k: int) -> str:
    return Threat("linf", k / 255).label


SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "architectures_cpu.yaml"
#: balanced accuracy is the headline (issue 25.8): on imbalanced PneumoniaMNIST a majority-class network keeps its
#: plain accuracy under any attack; plain accuracy stays as ``acc`` for the MedMNIST v2 comparison
COLUMNS = {
    "bal_acc": "test/bal_acc",
    "acc": "test/acc",
    "auroc": "test/auroc",
    **{f"fgsm_{k}": build_name("adv_attack", attack="fgsm", threat=_linf(k), stat="bal_acc") for k in (1, 2, 4)},
    **{f"pgd_{k}": build_name("adv_attack", attack="pgd10", threat=_linf(k), stat="bal_acc") for k in (1, 2, 4)},
    **{f"worst_{k}": build_name("summary_adv", stat="bal_acc", threat=_linf(k)) for k in (1, 2, 4)},
    "deepfool_l2": "test/adv/deepfool/l2_dist/median",
    "deepfool_fooled": "test/adv/deepfool/l2_dist/fooled",
    "jsma_l0": "test/adv/jsma/l0_dist/median",
    "jsma_fooled": "test/adv/jsma/l0_dist/fooled",
}
#: the robustness measures a flag compares
ROBUSTNESS = ("worst_1", "worst_2", "worst_4", "deepfool_l2", "jsma_l0")
AUROC_WINDOW = 0.01


def decoded(value: float) -> float:
    """MLflow stores ``inf`` as the largest float."""
    return math.inf if value >= 1e308 else value


def spread_cell(values: list[float], seeds: list[Any] | None = None) -> dict:
    """Mean, spread and 95% t interval of one network's seeds (``seeds`` name them, for paired comparisons)."""
    finite = all(math.isfinite(v) for v in values)
    return (interval(values) if finite else {"lo": math.nan, "hi": math.nan, "n": len(values)}) | {
        "mean": statistics.mean(values) if finite else math.inf,
        "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if finite else math.nan,
        "range": max(values) - min(values) if finite else math.nan,
        "seeds": values,
        "by_seed": dict(zip(seeds if seeds is not None else range(len(values)), values, strict=True)),
    }


def network(params: dict[str, str]) -> str:
    name = params.get("model.model_name", "resnet18")
    return name + ("" if params.get("model.small_input", "true").lower() == "true" else " (ImageNet stem)")


def collapsed(run: Any) -> bool:
    """The module's label-aware ``test.near_constant`` tag; for a run without it, the top share alone."""
    tag = run.data.tags.get("test.near_constant")
    if tag is not None:
        return tag == "true"
    return run.data.metrics.get("summary/clean_top_pred_share", 0.0) >= CONSTANT_SHARE


def table(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[str, dict[str, dict]]:
    """dataset -> network -> {column: {mean, std, range, seeds}, n_seeds, runs}."""
    groups: dict[tuple[str, str], list] = {}
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status == "FINISHED":
            key = (run.data.params.get("data.flag", "pneumoniamnist"), network(run.data.params))
            groups.setdefault(key, []).append(run)
    out: dict[str, dict[str, dict]] = {}
    for (flag, net), runs in sorted(groups.items()):
        constant = [r for r in runs if collapsed(r)]
        kept = [r for r in runs if r not in constant]
        cells = {}
        for column, metric in COLUMNS.items():
            present = [run for run in kept if metric in run.data.metrics]
            values = [decoded(run.data.metrics[metric]) for run in present]
            if values:
                cells[column] = spread_cell(values, [run.data.params.get("seed_everything") for run in present])
        out.setdefault(flag, {})[net] = {
            "n_seeds": len(kept),
            "constant_seeds": [r.data.params.get("seed_everything") for r in constant],
            "runs": [run.info.run_id for run in kept],
            "cells": cells,
        }
    return out


def flagged_pairs(rows: dict[str, dict]) -> list[dict]:
    """Pairs within ``AUROC_WINDOW`` of clean AUROC whose robustness differs: the 95% interval of the difference
    paired by seed excludes 0 (issue 25.20; at 2 seeds only a very consistent gap does)."""
    flags = []
    eligible = {net: row for net, row in rows.items() if row["n_seeds"] >= 2}
    for (a, ra), (b, rb) in itertools.combinations(eligible.items(), 2):
        ca, cb = ra["cells"], rb["cells"]
        if "auroc" not in ca or "auroc" not in cb or abs(ca["auroc"]["mean"] - cb["auroc"]["mean"]) > AUROC_WINDOW:
            continue
        for measure in ROBUSTNESS:
            if measure not in ca or measure not in cb:
                continue
            gap = abs(ca[measure]["mean"] - cb[measure]["mean"])
            spread = max(ca[measure]["range"], cb[measure]["range"])
            paired = paired_difference(ca[measure]["by_seed"], cb[measure]["by_seed"])
            if math.isfinite(gap) and paired["verdict"] in ("higher", "lower"):
                flags.append(
                    {
                        "a": a,
                        "b": b,
                        "auroc_a": ca["auroc"]["mean"],
                        "auroc_b": cb["auroc"]["mean"],
                        "measure": measure,
                        "a_value": ca[measure]["mean"],
                        "b_value": cb[measure]["mean"],
                        "gap": gap,
                        "seed_spread": spread,
                        "paired": [paired["mean"], paired["lo"], paired["hi"], paired["n"]],
                    }
                )
    return flags


def figure(study: dict[str, dict[str, dict]]) -> plt.Figure:
    """Per dataset, clean AUROC against median DeepFool distance and against worst-case accuracy at 2/255."""
    measures = (("deepfool_l2", "median DeepFool distance (L2)"), ("worst_2", "accuracy, FGSM+PGD-10 at 2/255"))
    fig, axes = plt.subplots(len(study), 2, figsize=(11, 4 * len(study)), squeeze=False)
    colours = {net: f"C{k}" for k, net in enumerate(sorted({net for rows in study.values() for net in rows}))}
    for row, (flag, rows) in zip(axes, study.items(), strict=True):
        for ax, (measure, label) in zip(row, measures, strict=True):
            for net, r in rows.items():
                c = r["cells"]
                if "auroc" in c and measure in c and all(math.isfinite(v) for v in c[measure]["seeds"]):
                    ax.scatter(c["auroc"]["seeds"], c[measure]["seeds"], color=colours[net], label=net, s=25)
                    ax.errorbar(c["auroc"]["mean"], c[measure]["mean"], fmt="x", color=colours[net], ms=9)
            ax.set_xlabel("clean test AUROC")
            ax.set_ylabel(label)
            ax.set_title(flag)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle("Same clean AUROC, different robustness? (dots: seeds; crosses: means)")
    fig.tight_layout()
    return fig


def cell(c: dict) -> str:
    return show(c) if math.isfinite(c["mean"]) else "inf (" + ", ".join(f"{v:.3g}" for v in c["seeds"]) + ")"


def print_table(study: dict[str, dict[str, dict]], flags: dict[str, list[dict]]) -> None:
    shown = ("bal_acc", "auroc", "pgd_1", "pgd_2", "pgd_4", "worst_2", "deepfool_l2", "deepfool_fooled", "jsma_l0")
    for flag, rows in study.items():
        print(
            f"\n{flag}: mean [95% t interval] (n seeds), networks in order of clean AUROC; accuracies balanced; "
            "FGSM and PGD-10 ONLY (no AutoAttack): robust accuracies are upper bounds of unknown tightness"
        )
        print(f"{'network':<34}{'seeds':>5} " + "".join(f"{c:>16}" for c in shown))
        ordered = sorted(rows.items(), key=lambda kv: -kv[1]["cells"].get("auroc", {"mean": 0})["mean"])
        for net, r in ordered:
            cells = r["cells"]
            text = [cell(cells[c]) if c in cells else "-" for c in shown]  # near-constant seeds counted, left out
            left_out = f"  (constant, left out: seed {', '.join(r['constant_seeds'])})" if r["constant_seeds"] else ""
            print(f"{net:<34}{r['n_seeds']:>5} " + "".join(f" {t:>15}" for t in text) + left_out)
        print(
            f"flagged pairs ({len(flags[flag])}): AUROC within {AUROC_WINDOW:.2f}, the paired difference's 95% "
            "interval excludes 0"
        )
        for f in flags[flag]:
            mean, lo, hi, n = f["paired"]
            print(
                f"  {f['a']} ({f['auroc_a']:.3f}) vs {f['b']} ({f['auroc_b']:.3f}): {f['measure']} "
                f"{f['a_value']:.4f} vs {f['b_value']:.4f} (paired {mean:+.4f} [{lo:+.4f}, {hi:+.4f}], n={n})"
            )


def main(argv: list[str] | None = None) -> int:
    args = study_parser(__doc__).parse_args(argv)
    uri, client = open_store(args)
    if not args.report_only:
        code = sweep_main([str(SWEEP), "--tracking-uri", uri])
        if code:
            print("some points of architectures_cpu did not finish; the table covers the FINISHED ones")
    experiment_id, parent = parent_run(client, "architectures", "architectures_cpu")
    study = table(client, experiment_id, parent)
    flags = {flag: flagged_pairs(rows) for flag, rows in study.items()}
    print_table(study, flags)
    payload = {"sweep": "architectures_cpu", "auroc_window": AUROC_WINDOW, "datasets": study, "flagged": flags}
    publish(client, parent, "architecture_study.json", payload, {"plots/architecture_study.png": figure(study)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
