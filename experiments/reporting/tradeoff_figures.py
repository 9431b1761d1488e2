"""The trade-off figures of a sweep or report: clean against adversarial or shifted performance, and sweep curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medrobust.experiments.reporting.tradeoff import (
    METRIC_NAMES,
    Group,
    display_value,
    numeric_value,
    paired_stats,
    pareto_front,
)
from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.metrics.summary import SUMMARY


def _scatter_panel(
    ax: Any,
    groups: Sequence[Group],
    xkey: str,
    ykey: str,
    xlabel: str,
    ylabel: str,
    registered: Mapping[str, str] | None = None,
) -> None:
    pairs = paired_stats(groups, xkey, ykey)
    registered = registered or {}
    for group, sx, sy in pairs:
        for run in group.runs:
            if xkey in run.summary and ykey in run.summary:
                x, y = run.summary[xkey], run.summary[ykey]
                ax.scatter(x, y, s=12, alpha=0.35, color="0.4", zorder=2)
                if run.run_id in registered:  # the run a registered model version was made from
                    ax.scatter(x, y, marker="*", s=220, color="gold", edgecolors="black", linewidths=0.8, zorder=5,
                               label="registered model")  # fmt: skip
                    ax.annotate(registered[run.run_id], (x, y), textcoords="offset points", xytext=(6, -12),
                                fontsize=7, fontweight="bold")  # fmt: skip
        ax.errorbar(sx[0], sy[0], xerr=sx[1], yerr=sy[1], fmt="o", ms=6, capsize=3, zorder=3)
        flag = " [near-constant]" if group.near_constant else ""
        ax.annotate(
            f"{group.label} (n={sx[2]}){flag}", (sx[0], sy[0]), textcoords="offset points", xytext=(5, 5), fontsize=7
        )
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
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one "registered model" entry however many runs are marked
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower left")


def tradeoff_figure(
    groups: Sequence[Group], threats: Sequence[str], metric: str, registered: Mapping[str, str] | None = None
) -> plt.Figure:
    """Clean ``metric`` (x) against the worst-case adversarial ``metric`` (y), one panel per budget; the runs in
    ``registered`` (run id -> ``NAME vN @alias``) are marked with a star and their label."""
    n = max(len(threats), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    name = METRIC_NAMES[metric]
    for ax, threat in zip(axes.flat, threats, strict=False):
        _scatter_panel(
            ax,
            groups,
            f"{SUMMARY}clean_{metric}",
            f"{SUMMARY}adv_{metric}/{threat}",
            f"clean {name}",
            f"worst-case adversarial {name}",
            registered,
        )
        ax.set_title(f"eps: {Threat.from_label(threat)}", fontsize=10)
    for ax in list(axes.flat)[len(threats) :]:
        ax.set_visible(False)
    fig.suptitle(f"Accuracy-robustness trade-off by {name} (worst case over attacks per sample; bars: std over seeds)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
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


def sweep_curves_figure(groups: Sequence[Group], axis: str, threats: Sequence[str], metric: str) -> plt.Figure | None:
    """Every headline summary metric along one numeric swept axis (mean +- std over seeds)."""
    xs = {g.label: numeric_value(g.values.get(axis)) for g in groups}
    groups = sorted((g for g in groups if xs[g.label] is not None), key=lambda g: xs[g.label])
    if len(groups) < 2:
        return None
    name = METRIC_NAMES[metric]
    series = [("clean_acc", "clean acc"), ("clean_bal_acc", "clean bal. acc"), ("clean_auroc", "clean AUROC")]
    series += [(f"adv_{metric}/{t}", f"adv {name} {t}") for t in threats]
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
