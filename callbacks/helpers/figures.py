"""Matplotlib figures that callbacks log into MLflow (Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts with row-normalised colour; ``(L, 2, 2)`` multi-label matrices get one small panel per label."""
    if matrix.ndim == 3:
        return _multilabel_figure(matrix, class_names, title)
    n = len(matrix)
    size = max(3.5, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    _draw(ax, matrix, class_names)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _multilabel_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    cols = min(5, len(matrix))
    rows = -(-len(matrix) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax, m, name in zip(axes.flat, matrix, class_names, strict=False):
        _draw(ax, m, ["neg", "pos"], fontsize=7)
        ax.set_title(name[:24], fontsize=8)
    for ax in axes.flat[len(matrix) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _draw(ax: plt.Axes, matrix: np.ndarray, names: Sequence[str], fontsize: int = 9) -> None:
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    labels = [name[:14] for name in names]
    ax.set_xticks(range(len(matrix)), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(matrix)), labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{int(count)}",
            ha="center",
            va="center",
            fontsize=fontsize,
            color="white" if rates[i, j] > 0.5 else "black",
        )


def robustness_figure(results: list[dict]) -> Figure:
    """Accuracy against eps, one line per attack, one panel per norm; eps 0 is clean accuracy."""
    norms = sorted({r["norm"] for r in results if r["norm"]})
    clean = next((r["acc"] for r in results if r["attack"] == "clean"), None)
    fig, axes = plt.subplots(1, max(len(norms), 1), figsize=(5 * max(len(norms), 1), 3.8), squeeze=False)
    for ax, norm in zip(axes.flat, norms, strict=False):
        for attack in sorted({r["attack"] for r in results if r["norm"] == norm}):
            rows = sorted((r for r in results if r["norm"] == norm and r["attack"] == attack), key=lambda r: r["eps"])
            eps = [0.0] + [r["eps"] for r in rows] if clean is not None else [r["eps"] for r in rows]
            acc = [clean] + [r["acc"] for r in rows] if clean is not None else [r["acc"] for r in rows]
            label = attack
            counts = {r.get("n") for r in rows} - {None}
            if counts:  # an attack run on fewer samples (AutoAttack under max_samples) is not on the same footing
                label += f" (n={'/'.join(str(c) for c in sorted(counts))})"
            ax.plot([e * 255 for e in eps] if norm == "linf" else eps, acc, marker="o", label=label)
        ax.set_xlabel("eps (x/255)" if norm == "linf" else "eps (L2, pixel units)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"{norm.upper()} robustness")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def shift_heatmap(report: dict) -> Figure:
    """Balanced accuracy per corruption (rows) and severity (columns), with the clean value in the title."""
    corruptions = report["corruptions"]
    names = list(corruptions)
    grid = np.array(
        [[corruptions[n]["severities"].get(k, {}).get("bal_acc", np.nan) for k in range(1, 6)] for n in names]
    )
    fig, ax = plt.subplots(figsize=(6.5, 0.42 * len(names) + 1.6))
    image = ax.imshow(grid, cmap="viridis", vmin=0.5 if np.nanmin(grid) >= 0.5 else 0, vmax=1, aspect="auto")
    ax.set_xticks(range(5), [f"s{k}" for k in range(1, 6)])
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if value < 0.75 else "black"
            )
    clean = report.get("clean") or {}
    title = f"{report['flag']}: balanced accuracy under corruption"
    if clean:
        title += f" (clean {clean['bal_acc']:.2f})"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def corruption_examples(images: dict[str, np.ndarray], severities: tuple[int, ...] = (1, 3, 5)) -> Figure:
    """One image per corruption (rows) at a few severities (columns); ``images`` maps ``"<name>/s<k>"`` and
    ``"clean"`` to ``(C, H, W)`` uint8 arrays."""
    names = sorted({key.split("/")[0] for key in images if key != "clean"})
    fig, axes = plt.subplots(
        len(names), len(severities) + 1, figsize=(1.3 * (len(severities) + 1), 1.3 * len(names)), squeeze=False
    )
    for row, name in enumerate(names):
        for col, key in enumerate(["clean", *(f"{name}/s{k}" for k in severities)]):
            ax = axes[row, col]
            image = images.get(key)
            if image is not None:
                ax.imshow(image.transpose(1, 2, 0).squeeze(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(key.split("/")[-1] if key != "clean" else "clean", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def distance_figure(distances: dict[str, dict]) -> Figure:
    """Accuracy against the perturbation size each minimal-distance attack needed, one panel per attack: the share of
    the attacked samples (misclassified ones at distance 0) whose distance exceeds the abscissa."""
    fig, axes = plt.subplots(1, len(distances), figsize=(4.2 * len(distances), 3.6), squeeze=False)
    for ax, (attack, d) in zip(axes.flat, distances.items(), strict=False):
        values = np.array(d["values"], dtype=float)
        total = len(values) + d["misclassified"]
        finite = np.sort(values[np.isfinite(values)])
        scale = 255 if d["norm"] == "linf" else 1
        xs = np.concatenate([[0.0], finite * scale])
        acc = np.array([len(values) - k for k in range(len(finite) + 1)]) / max(total, 1)
        ax.step(xs, acc, where="post")
        if d["n"] and np.isfinite(d["median"]):
            ax.axvline(d["median"] * scale, color="grey", ls="--", lw=1, label=f"median {d['median'] * scale:.3g}")
            ax.legend()
        unit = {"linf": "L-inf (x/255)", "l2": "L2 (pixel units)", "l0": "L0 (share of values)"}[d["norm"]]
        ax.set_xlabel(f"{attack} distance, {unit}")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        title = f"{attack}: n={d['n']} ({d['misclassified']} misclassified), fooled {d['fooled']:.0%}"
        ax.set_title(title if d["n"] else attack, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
