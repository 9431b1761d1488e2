"""Saliency alignment (../shared/SCIENCE.md, section 5) on real data, in one command.

Default: PneumoniaMNIST with known evidence regions (``--data.evidence``: each class's pattern at a random, recorded
position), standard training against PGD-AT and TRADES at L-inf 8/255, 2 seeds each
(``experiments/sweeps/pneumonia_saliency_cpu.yaml``). ``--shortcut``: BreastMNIST with a localised shortcut marker,
ERM against distillation from a clean teacher, 3 seeds, the marker at a fixed corner and at random positions
(``experiments/sweeps/breast_shortcut_saliency_cpu.yaml``;
the teachers come from ``python -m medrobust.experiments.studies.shortcut_distillation --dataset breast`` in the same
store),
scored against the marker's mask: there, *high* energy means the model looks at the shortcut.

Runs the sweep (FINISHED children are kept), then writes ``saliency_study.json`` and ``plots/saliency_study.png``
(per method and arm: energy in the mask and pointing game, one dot per seed) into the sweep's parent run and prints
the table: mean +- std over seeds of each metric per method and arm (``*_randomised``: the same architecture
untrained, where the run has the control), beside clean accuracy and accuracy under PGD.

    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.saliency_alignment
    MEDMNIST_ROOT=../shared/data/medmnist python -m medrobust.experiments.studies.saliency_alignment --shortcut
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from mlflow import MlflowClient

from medrobust.experiments.reporting.seed_statistics import interval, paired_difference, show, show_difference
from medrobust.experiments.studies.study_runs import open_store, parent_run, publish, study_parser
from medrobust.experiments.sweeping.sweep import sweep_main
from medrobust.experiments.sweeping.sweep_store import child_runs
from medrobust.lightning_modules.saliency.attributions import METHODS

ROOT = Path(__file__).resolve().parents[1]
#: each bounded score beside its chance level and ceiling, and normalised: (x - chance) / (ceiling - chance)
METRICS = (
    "energy",
    "energy_chance",
    "energy_norm",
    "pointing",
    "pointing_norm",
    "iou",
    "iou_chance",
    "iou_ceiling",
    "iou_norm",
    "sensitivity",
    "rank_corr",
)
#: the per-class scores every class of the task gets (``energy_class<k>``), found in the runs: every class is listed
PER_CLASS = ("energy_class", "pointing_class")
RANDOMISED = (
    "energy_randomised",
    "energy_norm_randomised",
    "pointing_randomised",
    "spearman_randomised",
    "ssim_randomised",
)
CONTEXT = {
    "clean_bal_acc": "test/bal_acc",  # balanced accuracy is the headline (issue 25.8)
    "clean_auroc": "test/auroc",
    "adv_bal_acc_2/255": "summary/adv_bal_acc/linf_2_255",
    "adv_bal_acc_8/255": "summary/adv_bal_acc/linf_8_255",
    "flipped_auroc": "test/shortcut/flipped/auroc",
}


@dataclass(frozen=True)
class Study:
    sweep: str
    experiment: str
    prefix: str  # where the split's saliency metrics live: test/saliency or test/shortcut/aligned/saliency
    mask: str  # what the mask marks, for the table

    @property
    def path(self) -> Path:
        return ROOT / "sweeps" / f"{self.sweep}.yaml"


STUDIES = {
    "evidence": Study("pneumonia_saliency_cpu", "pneumonia_saliency", "test/saliency", "evidence pattern"),
    "shortcut": Study("breast_shortcut_saliency_cpu", "breast_shortcut", "test/shortcut/aligned/saliency", "marker"),
}


def arm(params: dict[str, str]) -> str:
    """The arm of a child run from its params."""
    if "data.shortcut.kind" in params:
        name = "distilled" if "callbacks.FeatureDistillation.teacher" in params else "erm"
        # the marker at random positions is the study; the top-left corner, where timm's ImageNet stem looked before
        # training, is its labelled control (issue 25.9)
        return name + ("_fixed_corner_control" if params.get("data.shortcut.position", "fixed") == "fixed" else "")
    eps = params.get("callbacks.AdversarialTraining.eps", "0")
    if eps in ("0", "0.0"):
        return "standard"
    return "trades" if params.get("callbacks.AdversarialTraining.method") == "trades" else "pgd_at"


def per_class(metrics: dict[str, float], prefix: str) -> list[str]:
    """The per-class score names a run logged under ``prefix`` (``energy_class0`` ... for every class), sorted."""
    pattern = re.compile(rf"{re.escape(prefix)}/[^/]+/((?:{'|'.join(PER_CLASS)})(\d+))$")
    found = {(m.group(1), int(m.group(2))) for key in metrics if (m := pattern.match(key))}
    return [name for name, _ in sorted(found, key=lambda item: (item[0].rstrip("0123456789"), item[1]))]


def table(client: MlflowClient, experiment_id: str, parent_id: str, study: Study) -> dict:
    """Per arm: the seeds' values of every saliency metric per method and of the context metrics, and their spread."""
    arms: dict[str, list[dict]] = {}
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status != "FINISHED":
            continue
        metrics = run.data.metrics
        values = {
            f"{method}/{m}": metrics.get(f"{study.prefix}/{method}/{m}")
            for method in METHODS
            for m in (*METRICS, *per_class(metrics, study.prefix), *RANDOMISED)
        }
        values |= {name: metrics.get(key) for name, key in CONTEXT.items()}
        values["seed"] = float(run.data.params.get("seed_everything", "nan"))
        values["run_id"] = run.info.run_id
        arms.setdefault(arm(run.data.params), []).append(values)
    out = {}
    for name, seeds in arms.items():
        cells = {}
        for key in seeds[0]:
            if key in ("seed", "run_id"):
                continue
            present = [s[key] for s in seeds if s[key] is not None]
            if present:
                spread = statistics.stdev(present) if len(present) > 1 else 0.0
                by_seed = {s["seed"]: s[key] for s in seeds if s[key] is not None}
                cells[key] = interval(present) | {"std": spread, "seeds": present, "by_seed": by_seed}
        out[name] = {"n_seeds": len(seeds), "seeds": [s["seed"] for s in seeds], "runs": [s["run_id"] for s in seeds]}
        out[name]["cells"] = cells
    return out


#: the scores the arms are compared by, paired by seed against the baseline arm (standard training, or ERM)
COMPARED = ("energy_norm", "iou_norm", "pointing_norm")


def paired_arms(rows: dict) -> dict[str, dict]:
    """Per arm other than the baseline (standard training, or ERM with the same marker placement), method and score
    of :data:`COMPARED`: the paired difference by seed."""
    out: dict[str, dict] = {}
    for name, row in rows.items():
        suffix = "_fixed_corner_control" if name.endswith("_fixed_corner_control") else ""
        baseline = next((b + suffix for b in ("standard", "erm") if b + suffix in rows), None)
        if baseline is None or name == baseline:
            continue
        for method in METHODS:
            for score in COMPARED:
                key = f"{method}/{score}"
                if key in row["cells"] and key in rows[baseline]["cells"]:
                    diff = paired_difference(row["cells"][key]["by_seed"], rows[baseline]["cells"][key]["by_seed"])
                    out[f"{name}-{baseline}/{key}"] = diff
    return out


def figure(rows: dict, study: Study) -> plt.Figure:
    """Energy in the mask and pointing game per method, one group of bars per method, one bar per arm (mean over
    seeds, a dot per seed)."""
    methods = [m for m in METHODS if any(f"{m}/energy" in r["cells"] for r in rows.values())]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(rows))
    for ax, metric in zip(axes, ("energy", "pointing"), strict=True):
        for k, (name, row) in enumerate(rows.items()):
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(methods))]
            cells = [row["cells"].get(f"{m}/{metric}") for m in methods]
            ax.bar(xs, [c["mean"] if c else 0 for c in cells], width, label=name, alpha=0.8)
            for x, c in zip(xs, cells, strict=True):
                if c:
                    ax.scatter([x] * len(c["seeds"]), c["seeds"], color="black", s=8, zorder=3)
        ax.set_xticks(range(len(methods)), [m.replace("_", "\n") for m in methods], fontsize=8)
        ax.set_ylabel(f"{metric} ({study.mask} mask)")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{study.sweep}: saliency alignment per method and arm (mean over seeds; dots: seeds)")
    fig.tight_layout()
    return fig


def print_table(rows: dict, study: Study) -> None:
    def cell(row: dict, key: str) -> str:
        return show(row["cells"].get(key))

    print(
        f"\n{study.sweep}: mean [95% t interval] (n seeds); masks mark the {study.mask}; adversarial context: PGD ONLY "
        "(no AutoAttack), upper bounds"
    )
    context = [k for k in CONTEXT if any(k in r["cells"] for r in rows.values())]
    print(f"{'arm':<16}{'seeds':>6}  " + "  ".join(f"{k:>15}" for k in context))
    for name, row in rows.items():
        print(f"{name:<16}{row['n_seeds']:>6}  " + "  ".join(f"{cell(row, k):>15}" for k in context))
    classes = sorted(
        {key.split("/", 1)[1] for r in rows.values() for key in r["cells"] if "_class" in key},
        key=lambda k: (k.rstrip("0123456789"), int(k[len(k.rstrip("0123456789")) :])),
    )
    columns = (*METRICS, *classes, *RANDOMISED)  # every class of the task, not classes 0 and 1
    print(f"\n{'method':<22}{'arm':<16}" + "".join(f"{m[:14]:>15}" for m in columns))
    for method in METHODS:
        for name, row in rows.items():
            if f"{method}/energy" in row["cells"]:
                print(f"{method:<22}{name:<16}" + "".join(f"{cell(row, f'{method}/{m}'):>15}" for m in columns))


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__)
    parser.add_argument("--shortcut", action="store_true", help="the BreastMNIST shortcut-marker study instead")
    args = parser.parse_args(argv)
    study = STUDIES["shortcut" if args.shortcut else "evidence"]
    uri, client = open_store(args)
    if not args.report_only:
        code = sweep_main([str(study.path), "--tracking-uri", uri])
        if code:
            print(f"some points of {study.sweep} did not finish; the table covers the FINISHED ones")
    experiment_id, parent = parent_run(client, study.experiment, study.sweep)
    rows = table(client, experiment_id, parent, study)
    print_table(rows, study)
    paired = paired_arms(rows)
    print("\npaired by seed against the baseline arm (a difference only where the interval excludes 0):")
    for comparison, diff in paired.items():
        print(f"  {comparison}: {show_difference(diff)}")
    payload = {"sweep": study.sweep, "prefix": study.prefix, "mask": study.mask, "arms": rows, "paired": paired}
    publish(client, parent, "saliency_study.json", payload, {"plots/saliency_study.png": figure(rows, study)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
