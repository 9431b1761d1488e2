"""Choosing the Mahalanobis preprocessing magnitude, the best single layer and the ensemble's weights on validation
data, never on the test targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from medrobust.lightning_modules.detection.ensemble import FeatureEnsemble
from medrobust.lightning_modules.detection.mahalanobis import Mahalanobis


def batched_layer_scores(
    mahalanobis: Mahalanobis, images: torch.Tensor, noise: float, batch_size: int = 256
) -> torch.Tensor:
    """``(N, L)`` layer scores of ``images`` (on the detector's device), in batches."""
    device = next(mahalanobis.net.parameters()).device
    out = [
        mahalanobis.layer_scores(images[i : i + batch_size].to(device), noise).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, len(mahalanobis.layers))


def calibrate(
    ensemble: FeatureEnsemble,
    images_in: torch.Tensor,
    images_out: torch.Tensor,
    noises: Sequence[float],
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Set the detector's ``noise`` and ``layer`` and fit ``ensemble``, from validation images in [0, 1].

    As in Lee et al.: for each magnitude, every layer is scored with that preprocessing, the ensemble is fitted on
    half of the validation images and its AUROC measured on the other half; the magnitude with the best held-out
    AUROC wins (ties: the smaller). At that magnitude the best single layer is the one with the highest validation
    AUROC, and the ensemble is refitted on all validation samples. Returns the record of the choice.

    The halves split *images*, not positions: ``images_out[j]`` made from ``images_in[j]`` (an adversarial or
    corrupted copy) shares its image id ``j``, so the two land in the same half (and the same cross-validation fold
    of the ensemble's regularisation); with positions in the concatenated list, an odd number of images put every
    pair on both sides.
    """
    from sklearn.metrics import roc_auc_score

    mahalanobis = ensemble.mahalanobis
    labels = torch.cat([torch.ones(len(images_in)), torch.zeros(len(images_out))]).long()
    ids = torch.cat([torch.arange(len(images_in)), torch.arange(len(images_out))])  # a copy shares its source's id
    record: dict[str, Any] = {"noises": {}, "n_in": len(images_in), "n_out": len(images_out)}
    best: tuple[float, float, torch.Tensor] | None = None
    for noise in tqdm(noises, desc="Mahalanobis calibration", disable=not progress, leave=False):
        scores = torch.cat(
            [
                batched_layer_scores(mahalanobis, images_in, noise, batch_size),
                batched_layer_scores(mahalanobis, images_out, noise, batch_size),
            ]
        )
        fit, held = (ids % 2 == 0).nonzero().flatten(), (ids % 2 == 1).nonzero().flatten()
        ensemble.fit_scores(scores[fit], labels[fit], ids[fit])
        held_auroc = float(roc_auc_score(labels[held].numpy(), ensemble.combine(scores[held]).numpy()))
        per_layer = {
            name: float(roc_auc_score(labels.numpy(), scores[:, i].numpy()))
            for i, name in enumerate(mahalanobis.layers)
        }
        record["noises"][str(noise)] = {"ensemble_heldout_auroc": held_auroc, "layer_auroc": per_layer}
        if best is None or held_auroc > best[0]:
            best = (held_auroc, noise, scores)
    _, noise, scores = best
    mahalanobis.noise = noise
    per_layer = record["noises"][str(noise)]["layer_auroc"]
    mahalanobis.layer = max(per_layer, key=per_layer.get)
    ensemble.fit_scores(scores, labels, ids)
    record |= {
        "ensemble_c": ensemble.chosen_c,
        "split": "by image id (even / odd)",
        "noise": noise,
        "best_layer": mahalanobis.layer,
        "ensemble_weight": ensemble.weight.tolist(),
        "ensemble_bias": float(ensemble.bias),
    }
    return record
