"""Accuracy-robustness trade-off across MLflow runs: per-run summary metrics, seed aggregation, Pareto fronts,
figures and the ``tradeoff.json`` table, rebuilt from whatever is in MLflow (``medrobust report``).

Every run gets the same summary metric names, whichever attacks and shifts it was evaluated with, so MLflow's own
compare view (scatter, parallel coordinates) draws the trade-off too:

* ``summary/clean_acc``, ``summary/clean_bal_acc``, ``summary/clean_auroc``: the in-distribution test split;
* ``summary/adv_acc/<norm>_<eps>`` and ``summary/adv_bal_acc/<norm>_<eps>``: the lowest accuracy over the attacks
  evaluated at that budget (AutoAttack, PGD-k, FGSM: the strongest one counts);
* ``summary/shift_bal_acc``, ``summary/shift_auroc``: the mean over corruptions and severities; ``summary/shift_be``
  and ``summary/shift_rbe``: MedMNIST-C's BE and rBE, where the run has them.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from lightning_modules.components.threat_model import parse_eps

SUMMARY = "summary/"
TABLE = "tradeoff_table.json"
CLEAN = {"test/acc": "clean_acc", "test/bal_acc": "clean_bal_acc", "test/auroc": "clean_auroc"}
SHIFT = {
    "test/shift/mean/bal_acc": "shift_bal_acc",
    "test/shift/be": "shift_be",
    "test/shift/rbe": "shift_rbe",
}
#: tags the sweep writes; runs made in other ways have none of them
TAG_ROLE, TAG_SWEEP, TAG_POINT, TAG_VALUES, TAG_LABEL = (
    "sweep.role",
    "sweep.name",
    "sweep.point",
    "sweep.values",
    "sweep.label",
)
PARENT_TAG = "mlflow.parentRunId"


def summary_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The ``summary/*`` metrics of one run, from its ``test/*`` metrics (empty if it was never tested)."""
    out = {SUMMARY + name: metrics[key] for key, name in CLEAN.items() if key in metrics}
    adv: dict[tuple[str, str], list[float]] = {}
    shift_auroc = []
    for key, value in metrics.items():
        parts = key.split("/")
        # test/adv/<attack>/<norm>_<eps>/<acc|bal_acc>
        if len(parts) == 5 and parts[:2] == ["test", "adv"] and parts[4] in ("acc", "bal_acc"):
            adv.setdefault((parts[4], parts[3]), []).append(value)
        # test/shift/<corruption>/mean/auroc
        if len(parts) == 5 and parts[:2] == ["test", "shift"] and parts[3:] == ["mean", "auroc"]:
            shift_auroc.append(value)
    for (kind, threat), values in sorted(adv.items()):
        out[f"{SUMMARY}adv_{kind}/{threat}"] = min(values)
    out |= {SUMMARY + name: metrics[key] for key, name in SHIFT.items() if key in metrics}
    if shift_auroc:
        out[SUMMARY + "shift_auroc"] = statistics.mean(shift_auroc)
    return out


def threat_eps(threat: str) -> tuple[str, float]:
    """``"linf_8_255"`` -> ``("linf", 8/255)``; ``"l2_0.5"`` -> ``("l2", 0.5)``."""
    norm, _, eps = threat.partition("_")
    return norm, parse_eps(eps.replace("_", "/"))


def display_value(value: Any) -> str:
    """A swept value as people write it: ``"8/255"`` stays, ``0.25`` stays, dicts become compact JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def numeric_value(value: Any) -> float | None:
    """A swept value as a number for plotting (``"8/255"`` -> 0.0314), or ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return parse_eps(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None


def is_seed_key(key: str) -> bool:
    """Swept keys that only repeat a point (averaged over, not compared): ``seed_everything``, ``*.seed``."""
    last = key.rsplit(".", 1)[-1]
    return last in ("seed_everything", "seed") or last.endswith("_seed")


def short_key(key: str) -> str:
    """The last component of a dotted override key: ``callbacks.AdversarialTraining.eps`` -> ``eps``."""
    last = key.rsplit(".", 1)[-1]
    return "seed" if last == "seed_everything" else last


# ------------------------------------------------------------------------------------------------ collection
@dataclass
class RunRow:
    """One evaluated run: what was swept, and its summary."""

    run_id: str
    name: str
    status: str
    values: dict[str, Any]
    summary: dict[str, float]

    @property
    def seed(self) -> Any:
        return next((v for k, v in self.values.items() if is_seed_key(k)), None)

    @property
    def group(self) -> str:
        """The point without its seed: runs that differ only by seed share a group."""
        parts = [f"{short_key(k)}={display_value(v)}" for k, v in self.values.items() if not is_seed_key(k)]
        return ",".join(parts) if parts else (self.name if not self.values else "all")

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "status": self.status,
            "group": self.group,
            "seed": self.seed,
            "values": self.values,
            **{k.removeprefix(SUMMARY): v for k, v in self.summary.items()},
        }


@dataclass
class Group:
    """Runs of one point over seeds: mean and spread (sample std) per summary metric."""

    label: str
    values: dict[str, Any]
    runs: list[RunRow] = field(default_factory=list)

    def stats(self, key: str) -> tuple[float, float, int] | None:
        xs = [r.summary[key] for r in self.runs if key in r.summary and math.isfinite(r.summary[key])]
        if not xs:
            return None
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)

    def as_dict(self, keys: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.label, "values": self.values, "n": len(self.runs)}
        for key in keys:
            s = self.stats(key)
            if s is not None:
                name = key.removeprefix(SUMMARY)
                out[f"{name}/mean"], out[f"{name}/std"] = s[0], s[1]
        return out


def row_from_run(run: Any) -> RunRow:
    tags = run.data.tags
    name = tags.get("mlflow.runName", run.info.run_id[:8])
    if TAG_VALUES in tags:
        values = json.loads(tags[TAG_VALUES])
    else:
        # A run made outside a sweep: its name is the point, its seed (if logged) what repeats it.
        values = {"run": name}
        if "seed_everything" in run.data.params:
            values["seed_everything"] = run.data.params["seed_everything"]
    return RunRow(run.info.run_id, name, run.info.status, values, summary_metrics(run.data.metrics))


def group_rows(rows: Sequence[RunRow]) -> list[Group]:
    groups: dict[str, Group] = {}
    for row in rows:
        values = {k: v for k, v in row.values.items() if not is_seed_key(k)}
        groups.setdefault(row.group, Group(row.group, values)).runs.append(row)
    return list(groups.values())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


# ---------------------------------------------------------------------------------------------------- figures
def paired_stats(groups: Sequence[Group], xkey: str, ykey: str) -> list[tuple[Group, tuple, tuple]]:
    """The groups that have both metrics, each with ``(mean, std, n)`` of ``xkey`` and of ``ykey``."""
    pairs = [(group, group.stats(xkey), group.stats(ykey)) for group in groups]
    return [(group, sx, sy) for group, sx, sy in pairs if sx is not None and sy is not None]


def _scatter_panel(ax: Any, groups: Sequence[Group], xkey: str, ykey: str, xlabel: str, ylabel: str) -> None:
    pairs = paired_stats(groups, xkey, ykey)
    for group, sx, sy in pairs:
        for run in group.runs:
            if xkey in run.summary and ykey in run.summary:
                ax.scatter(run.summary[xkey], run.summary[ykey], s=12, alpha=0.35, color="0.4", zorder=2)
        ax.errorbar(sx[0], sy[0], xerr=sx[1], yerr=sy[1], fmt="o", ms=6, capsize=3, zorder=3)
        ax.annotate(f"{group.label} (n={sx[2]})", (sx[0], sy[0]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    if not pairs:
        ax.set_visible(False)
        return
    pts = [(sx[0], sy[0]) for _, sx, sy in pairs]
    front = pareto_front(pts)
    ax.plot(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        "--",
        color="crimson",
        lw=1.2,
        zorder=1,
        label="Pareto front (group means)",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def adv_threats(rows: Sequence[RunRow], kind: str = "acc") -> list[str]:
    threats = {k.split("/", 2)[2] for r in rows for k in r.summary if k.startswith(f"{SUMMARY}adv_{kind}/")}
    return sorted(threats, key=lambda t: (threat_eps(t)[0], threat_eps(t)[1]))


def tradeoff_figure(groups: Sequence[Group], threats: Sequence[str]) -> plt.Figure:
    """Clean accuracy (x) against adversarial accuracy (y), one panel per budget; mean +- std over seeds."""
    n = max(len(threats), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    for ax, threat in zip(axes.flat, threats, strict=False):
        norm = threat_eps(threat)[0]
        _scatter_panel(
            ax,
            groups,
            SUMMARY + "clean_acc",
            f"{SUMMARY}adv_acc/{threat}",
            "clean accuracy",
            f"adversarial accuracy ({norm}, eps={threat.partition('_')[2].replace('_', '/')})",
        )
    for ax in list(axes.flat)[len(threats) :]:
        ax.set_visible(False)
    fig.suptitle("Accuracy-robustness trade-off (worst attack per budget; bars: std over seeds)")
    fig.tight_layout()
    return fig


def shift_figure(groups: Sequence[Group]) -> plt.Figure:
    """Clean balanced accuracy (x) against mean balanced accuracy over the shifted splits (y)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    _scatter_panel(
        ax,
        groups,
        SUMMARY + "clean_bal_acc",
        SUMMARY + "shift_bal_acc",
        "clean balanced accuracy",
        "mean balanced accuracy under corruptions",
    )
    ax.set_title("Accuracy under distribution shift")
    fig.tight_layout()
    return fig


def sweep_curves_figure(groups: Sequence[Group], axis: str, threats: Sequence[str]) -> plt.Figure | None:
    """Every summary metric along one numeric swept axis (mean +- std over seeds)."""
    xs = {g.label: numeric_value(g.values.get(axis)) for g in groups}
    groups = sorted((g for g in groups if xs[g.label] is not None), key=lambda g: xs[g.label])
    if len(groups) < 2:
        return None
    series = [("clean_acc", "clean acc"), ("clean_bal_acc", "clean bal. acc"), ("clean_auroc", "clean AUROC")]
    series += [(f"adv_acc/{t}", f"adv acc {t}") for t in threats]
    series += [("shift_bal_acc", "shift bal. acc (mean)")]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label in series:
        stats = [g.stats(SUMMARY + key) for g in groups]
        if not any(stats):
            continue
        pts = [(xs[g.label], s) for g, s in zip(groups, stats, strict=True) if s]
        ax.errorbar(
            [p[0] for p in pts],
            [p[1][0] for p in pts],
            yerr=[p[1][1] for p in pts],
            marker="o",
            capsize=3,
            label=label,
            ls="--" if key.startswith("adv") else "-",
        )
    ticks = sorted({xs[g.label] for g in groups})
    ax.set_xticks(ticks, [display_value(next(g.values[axis] for g in groups if xs[g.label] == t)) for t in ticks])
    ax.set_xlabel(axis)
    ax.set_ylabel("metric (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------- report
def sync_summaries(client: MlflowClient, runs: Iterable[Any]) -> None:
    """Log ``summary/*`` into every run that lacks them (or has stale ones)."""
    for run in runs:
        summary = summary_metrics(run.data.metrics)
        stale = {k: v for k, v in summary.items() if run.data.metrics.get(k) != v}
        if stale:
            now = int(time.time() * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in stale.items()])
            run.data.metrics.update(stale)


def build_report(rows: Sequence[RunRow], axes: Sequence[str] = ()) -> dict[str, Any]:
    """The ``tradeoff.json`` content: every run, every group (mean/std over seeds), and the Pareto fronts."""
    groups = group_rows(rows)
    keys = sorted({k for r in rows for k in r.summary})
    fronts = {}
    for threat in adv_threats(rows):
        pairs = paired_stats(groups, SUMMARY + "clean_acc", f"{SUMMARY}adv_acc/{threat}")
        front = pareto_front([(sx[0], sy[0]) for _, sx, sy in pairs])
        fronts[threat] = [pairs[i][0].label for i in front]
    return {
        "axes": list(axes),
        "runs": [r.as_dict() for r in rows],
        "groups": [g.as_dict(keys) for g in groups],
        "pareto_front": fronts,
    }


def log_report(client: MlflowClient, run_id: str, rows: Sequence[RunRow], axes: Sequence[str] = ()) -> dict:
    """Write ``tradeoff.json``, the ``tradeoff_table.json`` MLflow table and the figures into ``run_id``."""
    import pandas as pd

    report = build_report(rows, axes)
    client.log_dict(run_id, report, "tradeoff.json")
    if report["runs"]:
        # MLflow's table format, written whole: client.log_table would append to the previous report's rows.
        table = pd.DataFrame([{k: v for k, v in r.items() if k != "values"} for r in report["runs"]])
        client.log_text(run_id, table.to_json(orient="split", index=False), TABLE)
        logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if {"path": TABLE, "type": "table"} not in logged:
            logged.append({"path": TABLE, "type": "table"})
            client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged))
    groups = group_rows(rows)
    threats = adv_threats(rows)
    figures = {}
    if threats:
        figures["plots/tradeoff_adversarial.png"] = tradeoff_figure(groups, threats)
    if any(SUMMARY + "shift_bal_acc" in r.summary for r in rows):
        figures["plots/tradeoff_shift.png"] = shift_figure(groups)
    numeric_axes = [
        a for a in axes if not is_seed_key(a) and all(numeric_value(g.values.get(a)) is not None for g in groups)
    ]
    if numeric_axes:
        fig = sweep_curves_figure(groups, numeric_axes[0], threats)
        if fig is not None:
            figures["plots/sweep_curves.png"] = fig
    for path, fig in figures.items():
        client.log_figure(run_id, fig, path)
        plt.close(fig)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The groups as a Markdown table: mean +- std over seeds for the headline metrics."""
    cols = ["clean_acc", "clean_bal_acc", "clean_auroc"]
    cols += sorted(
        {
            k.removesuffix("/mean")
            for g in report["groups"]
            for k in g
            if k.startswith("adv_acc/") and k.endswith("/mean")
        },
        key=lambda k: threat_eps(k.split("/")[1])[::-1],
    )
    cols += ["shift_bal_acc"]
    cols = [c for c in cols if any(f"{c}/mean" in g for g in report["groups"])]
    lines = ["| point | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g in report["groups"]:
        cells = [f"{g[c + '/mean']:.3f} ± {g[c + '/std']:.3f}" if c + "/mean" in g else "" for c in cols]
        lines.append(f"| {g['group']} | {g['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
