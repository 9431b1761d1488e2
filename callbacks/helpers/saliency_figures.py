"""The saliency grid: the same images, their evidence masks and every method's map, one row per image."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def saliency_grid(
    images: torch.Tensor,
    masks: torch.Tensor,
    maps: dict[str, torch.Tensor],
    labels: torch.Tensor,
    predictions: torch.Tensor,
    title: str,
) -> plt.Figure:
    """Columns: the image, the image with its mask outlined, then each method's map (its positive part, scaled to its
    own maximum per image, as the energy metric reads it) with the mask outlined in cyan."""
    n, columns = len(images), 2 + len(maps)
    fig, axes = plt.subplots(n, columns, figsize=(1.5 * columns, 1.6 * n + 0.4), squeeze=False)
    for row in range(n):
        image = images[row].permute(1, 2, 0).squeeze(-1).numpy()
        cmap = "gray" if image.ndim == 2 else None
        mask = masks[row].numpy()
        panels = [("image", image, cmap), ("mask", image, cmap)]
        for method, values in maps.items():
            positive = values[row].clamp_min(0)
            peak = float(positive.max())
            panels.append((method, (positive / peak if peak > 0 else positive).numpy(), "inferno"))
        for col, (name, picture, colours) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, cmap=colours, vmin=0, vmax=1, interpolation="nearest")
            if col > 0:
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", "\n"), fontsize=8)
        axes[row, 0].set_ylabel(f"y={int(labels[row])} p={int(predictions[row])}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def cascade_figure(cascade: dict[str, dict[str, dict[str, float]]]) -> plt.Figure:
    """Cascading randomisation: per method, the Spearman correlation and SSIM of the maps with the trained network's
    as more of its modules (head first) are randomised; a method that shows the model falls towards 0."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for method, stages in cascade.items():
        names = list(stages)
        for ax, metric in zip(axes, ("spearman", "ssim"), strict=True):
            ax.plot(range(1, len(names) + 1), [stages[s][metric] for s in names], marker="o", label=method)
            ax.set_xticks(range(1, len(names) + 1), [f"+{s}" for s in names], rotation=45, fontsize=7)
    for ax, label in zip(axes, ("Spearman rank correlation (|maps|)", "SSIM (|maps|)"), strict=True):
        ax.set_ylabel(label)
        ax.set_xlabel("modules randomised, from the head (cumulative)")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylim(-0.2, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Cascading model randomisation (Adebayo et al. 2018): trained maps against randomised ones")
    fig.tight_layout()
    return fig
