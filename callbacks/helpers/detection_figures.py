"""Figures of DetectionEvaluation: ROC curves per target and score histograms (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from medrobust.lightning_modules.detection import roc_points


def roc_figure(scores: dict[str, Any], detectors: Sequence[str]) -> Figure:
    """One panel per target: each detector's ROC (in-distribution positive), with its AUROC in the legend.

    ``scores``: ``{"targets": {target: {"in": {detector: [...]}, "out": {detector: [...]}}}}``, each target with the
    in-distribution scores its metrics compare with (for an adversarial target, the same images clean).
    """
    targets = list(scores["targets"])
    cols = min(4, max(len(targets), 1))
    rows = -(-len(targets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax, target in zip(axes.flat, targets, strict=False):
        for detector in detectors:
            s_in, s_out = scores["targets"][target]["in"][detector], scores["targets"][target]["out"][detector]
            if len(s_in) and len(s_out):
                fpr, tpr = roc_points(s_in, s_out)
                ax.plot(fpr, tpr, label=f"{detector} {np.trapezoid(tpr, fpr):.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("FPR (outliers kept)", fontsize=8)
        ax.set_ylabel("TPR (in-distribution kept)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.flat[len(targets) :]:
        ax.axis("off")
    fig.suptitle("Detection ROC per target (legend: AUROC)")
    fig.tight_layout()
    return fig


def score_histograms(scores: dict[str, Any], detectors: Sequence[str]) -> Figure:
    """A grid of targets x detectors: the in-distribution scores a target is compared with, against the target's."""
    targets = list(scores["targets"])
    fig, axes = plt.subplots(
        max(len(targets), 1), max(len(detectors), 1), figsize=(3 * len(detectors), 2.2 * len(targets)), squeeze=False
    )
    for i, target in enumerate(targets):
        for j, detector in enumerate(detectors):
            ax = axes[i, j]
            s_in = np.asarray(scores["targets"][target]["in"][detector], dtype=float)
            s_out = np.asarray(scores["targets"][target]["out"][detector], dtype=float)
            both = np.concatenate([s_in, s_out])
            bins = np.linspace(both.min(), both.max(), 40) if len(both) and both.max() > both.min() else 10
            ax.hist(s_in, bins=bins, alpha=0.6, density=True, label="in-distribution")
            if len(s_out):
                ax.hist(s_out, bins=bins, alpha=0.6, density=True, label="target")
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(detector, fontsize=9)
            if j == 0:
                ax.set_ylabel(target, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Detector scores (higher = more in-distribution)")
    fig.tight_layout()
    return fig
