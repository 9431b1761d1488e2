"""Useful nonrobust features (../shared/SCIENCE.md, section 1; Ilyas et al. 2019) on real PneumoniaMNIST, in one
command.

1. Sweep ``experiments/sweeps/pneumonia_nonrobust_sources_cpu.yaml``: a standard and a PGD-AT (L-inf 8/255)
   ResNet-18, the source models (FINISHED ones are reused).
2. ``medrobust construct`` from them: D_det and D_rand (targeted L2 PGD from the standard model, the paper's settings
   scaled to 28 px: eps 0.25, step 0.05, 100 steps), D_det at the paper's unscaled eps 0.5 (step 0.1), D_NR
   (representation matching against the standard model) and D_R (against the PGD-AT model), each logged as a run
   named as in ``DATASETS`` (a FINISHED one is reused). Matching runs up to ``--match-steps`` steps (the paper's
   1000), keeps each image's lowest-loss iterate and stops once no image improved by 0.1% in 50 steps (steps run:
   ``construct/steps_run_mean``); the remaining feature gap is ``construct/feature_gap_mean``. A det/rand set whose
   relabelled images fool the source less than 95% of the time is tagged ``construct.valid=false`` and listed apart.
3. Sweep ``experiments/sweeps/pneumonia_nonrobust_cpu.yaml``: a fresh standard model per dataset (and the original
   data) for a fixed 10 epochs, 3 seeds, tested on the original test split: clean, PGD at 1-8/255, MedMNIST-C.
4. Into that sweep's parent run: ``nonrobust_study.json``, ``plots/nonrobust_study.png`` (accuracy under attack, and
   clean vs MedMNIST-C balanced accuracy, per dataset) and ``plots/nonrobust_examples.png`` (original, constructed,
   difference x10 per kind); the table is printed.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.nonrobust_features
    python -m medrobust.experiments.studies.nonrobust_features --report-only      # the table again, from MLflow
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from mlflow import MlflowClient

from medrobust.datamodules.files import MedMNISTSpec, load_arrays, locate, resolve_roots
from medrobust.experiments.construction.construct import run_construct
from medrobust.experiments.reporting.seed_statistics import interval, paired_difference, show, show_difference
from medrobust.experiments.studies.study_runs import open_store, parent_run, publish, study_parser
from medrobust.experiments.sweeping.sweep import sweep_main
from medrobust.experiments.sweeping.sweep_store import child_runs, find_parent
from medrobust.lightning_modules.attacks.threat import parse_eps
from medrobust.utilities.mlflow_source import newest_finished

ROOT = Path(__file__).resolve().parents[1]
SOURCES, TRAIN = (
    ROOT / "sweeps" / "pneumonia_nonrobust_sources_cpu.yaml",
    ROOT / "sweeps" / "pneumonia_nonrobust_cpu.yaml",
)
EXPERIMENT = "pneumonia_nonrobust"
#: the constructed datasets: run name -> (kind, source arm, L2 eps; None: the paper's 0.5 scaled to 28 px, 0.25)
DATASETS = {
    "det_from_standard": ("det", "standard", None),
    "det_eps0.5_from_standard": ("det", "standard", 0.5),  # the paper's budget unscaled: the attack then succeeds
    "rand_from_standard": ("rand", "standard", None),
    "rand_eps0.5_from_standard": ("rand", "standard", 0.5),  # D_rand at the budget where D_det succeeds
    "nonrobust_from_standard": ("nonrobust", "standard", None),
    "robust_from_pgd_at": ("robust", "pgd_at", None),
}
#: a det/rand set is valid when the source reads the new label on this share of its relabelled images
MIN_SUCCESS = 0.95
#: representation matching: the paper's 1000 steps, stopped earlier once no image improved by 0.1% in 50 steps
MATCH_TOLERANCE = 1e-3
THREATS = ("linf_1_255", "linf_2_255", "linf_4_255", "linf_8_255")
METRICS = ("clean_acc", "clean_bal_acc", "clean_auroc", "shift_bal_acc", *(f"adv_bal_acc/{t}" for t in THREATS))


def source_runs(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    parent = find_parent(client, experiment_id, "pneumonia_nonrobust_sources_cpu")
    arms = {}
    for run in child_runs(client, experiment_id, parent.info.run_id):
        if run.info.status == "FINISHED":
            eps = parse_eps(run.data.params.get("callbacks.AdversarialTraining.eps", "0"))
            arms.setdefault("standard" if eps == 0 else "pgd_at", run.info.run_id)
    return arms


def current_construction(run, kind: str, match_steps: int, source_run_id: str) -> bool:
    """Whether a FINISHED construction run was built as this study builds it now: from the current source run, with
    the validity threshold, and for matching the same steps and convergence criterion (a run from before those
    settings existed is not)."""
    params = run.data.params
    expected = {"construct.min_success": str(MIN_SUCCESS), "construct.source_run_id": source_run_id}
    if kind not in ("det", "rand"):
        expected |= {"construct.steps": str(match_steps), "construct.tolerance": str(MATCH_TOLERANCE)}
    return all(params.get(key) == value for key, value in expected.items())


def build_datasets(client: MlflowClient, uri: str, experiment_id: str, work: Path, match_steps: int) -> None:
    sources = source_runs(client, experiment_id)
    for name, (kind, arm, eps) in DATASETS.items():
        found = newest_finished(client, EXPERIMENT, name)
        if found is not None and current_construction(found, kind, match_steps, sources[arm]):
            print(f"{name}: reusing its FINISHED run")
            continue
        if found is not None:
            print(f"{name}: its FINISHED run {found.info.run_id} was built with another protocol or source; rebuilding")
        ns = argparse.Namespace(
            source=sources[arm], kind=kind, out=work / f"pneumonia_{name}.npz", eps=eps,
            step=None if eps is None else eps / 5,  # the paper's step-to-eps ratio (0.1 / 0.5)
            steps=None if kind in ("det", "rand") else match_steps, norm="l2", start="image", seed=0, subsample=None,
            min_success=MIN_SUCCESS, match_tol=MATCH_TOLERANCE,
            chunk_size=256, data_root=None, data_path=None, overwrite=True, tracking_uri=uri,
            experiment_name=EXPERIMENT, run_name=name, no_mlflow=False,
        )  # fmt: skip
        run_construct(ns)


def arm_of(run) -> str:
    path = run.data.params.get("data.path", "None")
    return "original" if path in ("None", "") else path.rpartition("/")[2]


def table(client: MlflowClient, experiment_id: str, parent_id: str) -> dict:
    cells: dict = {}
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status != "FINISHED":
            continue
        cell = cells.setdefault(arm_of(run), {"seeds": [], "_by_seed": {}})
        seed = int(run.data.params.get("seed_everything", -1))
        cell["seeds"].append(seed)
        for metric in METRICS:
            value = run.data.metrics.get(f"summary/{metric}")
            if value is not None:
                cell.setdefault(metric, []).append(value)
                cell["_by_seed"].setdefault(metric, {})[seed] = value
    for cell in cells.values():
        by_seed = cell.pop("_by_seed")
        for metric in METRICS:
            values = cell.get(metric, [])
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cell[metric] = interval(values) | {"std": spread, "values": values, "by_seed": by_seed[metric]}
    return cells


def paired_with_original(result: dict) -> dict[str, dict]:
    """Each training set against the original data's protocol, paired by seed, on clean and 2/255 balanced
    accuracy and MedMNIST-C balanced accuracy."""
    original = result.get("original", {})
    out = {}
    for name, cell in result.items():
        if name == "original":
            continue
        for metric in ("clean_bal_acc", "adv_bal_acc/linf_2_255", "shift_bal_acc"):
            if metric in cell and metric in original:
                out[f"{name}-original/{metric}"] = paired_difference(
                    cell[metric]["by_seed"], original[metric]["by_seed"]
                )
    return out


def constructions(client: MlflowClient) -> dict:
    out = {}
    for name in DATASETS:
        run = newest_finished(client, EXPERIMENT, name)
        if run is not None:
            out[run.info.run_name] = {k.removeprefix("construct/"): v for k, v in run.data.metrics.items()}
            out[run.info.run_name]["run_id"] = run.info.run_id
            tag = run.data.tags.get("construct.valid")  # none: built before validity was recorded, unknown
            out[run.info.run_name]["valid"] = None if tag is None else tag == "true"
    return out


def figure(result: dict) -> plt.Figure:
    arms = sorted(result, key=lambda a: (a != "original", a))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    eps = [0, 1, 2, 4, 8]
    for name in arms:
        cell = result[name]
        means = [cell.get("clean_bal_acc", {}).get("mean", np.nan)]
        means += [cell.get(f"adv_bal_acc/{t}", {}).get("mean", np.nan) for t in THREATS]
        left.plot(eps, means, marker="o", label=name)
    left.set_xlabel("L-inf PGD-20 budget (/255)")
    left.set_ylabel("test balanced accuracy (mean over seeds)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    left.set_title("Balanced accuracy under attack, on the original test split")
    xs = np.arange(len(arms))
    for offset, metric, label in ((-0.2, "clean_bal_acc", "clean"), (0.2, "shift_bal_acc", "MedMNIST-C mean")):
        cells = [result[a].get(metric, {}) for a in arms]
        right.bar(xs + offset, [c.get("mean", np.nan) for c in cells], 0.4, yerr=[c.get("std", 0) for c in cells],
                  capsize=3, label=label)  # fmt: skip
    right.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
    right.set_xticks(xs, arms, rotation=20, ha="right", fontsize=8)
    right.set_ylabel("balanced accuracy (mean +- std over seeds)")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    right.set_title("Clean vs corrupted (chance 0.5)")
    fig.suptitle("Standard ResNet-18s trained on constructed PneumoniaMNIST training sets (Ilyas et al. 2019)")
    fig.tight_layout()
    return fig


def examples(client: MlflowClient, built: dict, original: np.ndarray, n: int = 6) -> plt.Figure:
    """Per kind: original training images, their constructed versions, and the difference x10 (grey = none)."""
    fig, axes = plt.subplots(3 * len(built), n, figsize=(1.4 * n, 1.5 * 3 * len(built)))
    for row, (name, info) in enumerate(built.items()):
        path = client.download_artifacts(info["run_id"], "dataset")
        with np.load(next(Path(path).glob("*.npz"))) as npz:
            images, labels = npz["train_images"][:n], npz["train_labels"][:n, 0]
        for col in range(n):
            a, b = original[col].astype(float), images[col].astype(float)
            for k, (image, title) in enumerate(((a, "original"), (b, f"{name} -> {labels[col]}"), (None, "diff x10"))):
                ax = axes[3 * row + k, col]
                shown = np.clip(128 + 10 * (b - a), 0, 255) if image is None else image
                ax.imshow(shown, cmap="gray", vmin=0, vmax=255)
                ax.set_axis_off()
                if col == 0:
                    ax.set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def print_table(result: dict, built: dict) -> None:
    print(
        "\n| training set | seeds | clean bal acc | clean acc | clean AUROC | "
        + " | ".join(f"bal acc {t}" for t in THREATS)
        + " | MedMNIST-C bal acc |"
    )
    print("|---|---|---|---|---|" + "---|" * len(THREATS) + "---|")
    invalid = {name for name, info in built.items() if info.get("valid") is not True}
    ordered = sorted(result, key=lambda a: (a in invalid, a != "original", a))
    for k, name in enumerate(ordered):
        cell = result[name]
        if name in invalid and (k == 0 or ordered[k - 1] not in invalid):
            print(
                f"| INVALID or unchecked constructions, listed apart (the source reads the new label on < "
                f"{MIN_SUCCESS:.0%} of changed labels, or the set predates the check): |" + " |" * (len(THREATS) + 5)
            )

        def cell_text(metric: str, cell: dict = cell) -> str:
            return show(cell.get(metric))

        shown = ("clean_bal_acc", "clean_acc", "clean_auroc", *(f"adv_bal_acc/{t}" for t in THREATS))
        row = [cell_text(m) for m in shown]
        print(f"| {name} | {cell['seeds']} | " + " | ".join(row) + f" | {cell_text('shift_bal_acc')} |")
    print(
        "\ncells: mean [95% t interval] (n seeds); robust columns: PGD-20 ONLY (no AutoAttack), upper bounds of "
        "unknown tightness. Paired by seed against the original data's protocol:"
    )
    for comparison, diff in paired_with_original(result).items():
        print(f"  {comparison}: {show_difference(diff)}")
    print("\nconstructions (the source model's agreement with the new label; L2 change; remaining feature gap):")
    for name, info in built.items():
        print(
            f"  {name}{'' if info.get('valid') else ' (INVALID or unchecked)'}: agrees "
            f"{info.get('source_agrees', float('nan')):.3f} (changed labels "
            f"{info.get('source_agrees_changed', float('nan')):.3f}, {info.get('label_changed', 0):.1%} changed), L2 "
            f"{info.get('l2_mean', float('nan')):.3f}, gap {info.get('feature_gap_mean', float('nan')):.3f}, "
            f"{info.get('seconds_per_image', float('nan')) * 1e3:.0f} ms/image"
        )


def main() -> int:
    parser = study_parser(__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("constructed"), help="where the .npz files are built")
    parser.add_argument(
        "--match-steps",
        type=int,
        default=1000,
        help=f"representation-matching steps at most (the paper's 1000; stopped when converged: {MATCH_TOLERANCE})",
    )
    args = parser.parse_args()
    uri, client = open_store(args)
    if not args.report_only:
        code = sweep_main([str(SOURCES), "--tracking-uri", uri])
        if code:
            return code
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        build_datasets(client, uri, experiment_id, args.work_dir, args.match_steps)
        code = sweep_main([str(TRAIN), "--tracking-uri", uri])
        if code:
            return code
    experiment_id, parent_id = parent_run(client, EXPERIMENT, "pneumonia_nonrobust_cpu")
    result, built = table(client, experiment_id, parent_id), constructions(client)
    figures = {"plots/nonrobust_study.png": figure(result)}
    if built:
        spec = MedMNISTSpec("pneumoniamnist", 28)
        original = load_arrays(spec, locate(spec, resolve_roots(None)))["train"][0]
        figures["plots/nonrobust_examples.png"] = examples(client, built, original)
    payload = {"table": result, "constructions": built, "paired": paired_with_original(result)}
    publish(client, parent_id, "nonrobust_study.json", payload, figures)
    print_table(result, built)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
