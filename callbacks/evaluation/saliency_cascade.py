"""The cascading model-randomisation check of SaliencyEvaluation, across processes (Adebayo et al. 2018)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from medrobust.callbacks.evaluation.outputs import gather_rows
from medrobust.lightning_modules.saliency.attributions import Explainer
from medrobust.lightning_modules.saliency.randomisation import cascade, map_similarity

#: per method, the images the cascade explains: ``(x, target, trained maps)`` batches
Kept = dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def cascade_similarity(
    trainer: Trainer,
    pl_module: LightningModule,
    initial: nn.Module,
    kept: Kept,
    twin: Callable[[nn.Module, str], Explainer],
) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and stage (the trained network's modules at ``initial``'s weights, head first, cumulatively), the
    mean Spearman correlation and SSIM of each kept image's map against its trained map. ``twin(net, method)`` is the
    method on another network. Every process takes part in every gather, whether it kept images or not."""
    rows: dict[str, dict[str, list[torch.Tensor]]] = {method: {} for method in kept}
    for stage, net in cascade(pl_module.net, initial):
        for method, batches in kept.items():
            explainer, found = twin(net, method), [torch.zeros(0, 2)]
            for x, target, trained in batches:
                similar = map_similarity(trained, explainer(x, target))
                found.append(torch.stack([similar["spearman"], similar["ssim"]], 1).cpu())
            rows[method][stage] = found
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, stages in rows.items():
        out[method] = {}
        for stage, found in stages.items():
            table = gather_rows(trainer, torch.cat(found), pl_module.device)
            out[method][stage] = {
                "spearman": float(table[:, 0].nanmean()) if len(table) else math.nan,
                "ssim": float(table[:, 1].nanmean()) if len(table) else math.nan,
            }
    return out


def cascade_metrics(stages: dict[str, dict[str, float]]) -> dict[str, float]:
    """One method's cascade as metric stats: ``cascade_<k>_<module>_{spearman,ssim}``, ``k`` modules randomised."""
    out = {}
    for k, (stage, values) in enumerate(stages.items(), start=1):
        key = f"cascade_{k}_{re.sub(r'[^a-z0-9_]', '_', stage.lower())}"
        out |= {f"{key}_{metric}": value for metric, value in values.items()}
    return out
