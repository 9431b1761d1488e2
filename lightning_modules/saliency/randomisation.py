"""Model-randomisation sanity checks for saliency maps (Adebayo et al. 2018), plain PyTorch.

A map that explains what the model learned must change when the model's weights are replaced by random ones. Two
checks, both against the same architecture at its initial weights:

* **independent randomisation**: the whole network at a fresh, seeded initialisation (:func:`initial_network`);
* **cascading randomisation**: the trained network with its top-level modules replaced by their initial weights one
  at a time, from the output towards the input, cumulatively (:func:`cascade`): the head, then the last block, and
  so on down to the stem.

What they measure is the similarity of each image's map before and after (:func:`map_similarity`): the Spearman rank
correlation and the SSIM of the absolute maps, as Adebayo et al. report. High similarity after randomisation means
the method shows the architecture or the image, not the model.

timm initialises ResNets with ``zero_init_last``: the last BatchNorm of every residual branch starts at gamma 0, so
at initialisation every branch outputs zero and the network is its stem and shortcuts. A control built that way is
degenerate (its maps are those of a much smaller network), so :func:`initial_network` sets such all-zero norm gammas
to one (:func:`revive_zero_init`), and the control is a network whose every layer computes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier
from medrobust.lightning_modules.saliency.saliency_metrics import spearman

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
SSIM_WINDOW = 7  # skimage's default, as Adebayo et al. used
_K1, _K2 = 0.01, 0.03


def revive_zero_init(net: nn.Module) -> int:
    """Set every norm layer's all-zero weight (gamma) to one; returns how many there were."""
    revived = 0
    with torch.no_grad():
        for module in net.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, _NORMS) and weight is not None and not weight.any():
                weight.fill_(1.0)
                revived += 1
    return revived


def initial_network(net: nn.Module, hparams: Mapping[str, Any], seed: int) -> nn.Module:
    """``net``'s architecture at initial weights: rebuilt from timm with the module's hyperparameters (``model_name``,
    ``num_classes``, ...; never pretrained), else a copy of ``net`` with every ``reset_parameters`` called; zero-init
    gammas revived (:func:`revive_zero_init`). Seeded without touching the global random state, built outside
    inference mode (its weights must take part in autograd), in eval mode on the CPU."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(seed)
        if "model_name" in hparams:
            fresh = NormalizedClassifier.from_hparams(hparams)
        else:
            fresh = copy.deepcopy(net).cpu()
            for module in fresh.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        revive_zero_init(fresh)
        return fresh.eval()


def cascade_stages(net: nn.Module) -> list[str]:
    """The top-level modules of ``net``'s backbone that hold parameters, from the output to the input (timm's
    ResNet-18: ``fc, layer4, layer3, layer2, layer1, bn1, conv1``)."""
    backbone = getattr(net, "backbone", net)
    return [name for name, module in backbone.named_children() if any(True for _ in module.parameters())][::-1]


def cascade(net: nn.Module, initial: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(stage, network)``: a copy of the trained ``net`` with the stages up to ``stage`` (:func:`cascade_stages`)
    at ``initial``'s weights, cumulatively, one stage more each time. Built outside inference mode, in eval mode."""
    with torch.inference_mode(False):
        randomised = copy.deepcopy(net).eval()
    source = getattr(initial, "backbone", initial)
    target = getattr(randomised, "backbone", randomised)
    for stage in cascade_stages(net):
        with torch.inference_mode(False), torch.no_grad():
            module = target.get_submodule(stage)
            fresh = source.get_submodule(stage).state_dict()
            module.load_state_dict({key: value.to(module.state_dict()[key].device) for key, value in fresh.items()})
        yield stage, randomised


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """Per-sample SSIM of ``(N, H, W)`` maps with a uniform ``window``, over the positions where the window fits (as
    scikit-image's ``structural_similarity`` with ``use_sample_covariance=False``; Quantus' ``ssim`` uses the sample
    covariance, about 1e-3 apart), with the pair's joint value range as the data range (as Quantus does)."""
    a, b = a.double().unsqueeze(1), b.double().unsqueeze(1)
    low = torch.minimum(a.flatten(1).min(1).values, b.flatten(1).min(1).values).view(-1, 1, 1, 1)
    high = torch.maximum(a.flatten(1).max(1).values, b.flatten(1).max(1).values).view(-1, 1, 1, 1)
    span = torch.where(high > low, high - low, torch.ones_like(high))  # a constant pair: any range, SSIM 1
    a, b = a / span, b / span  # scaled, not shifted: SSIM's luminance term is not shift-invariant
    pool = nn.functional.avg_pool2d
    ua, ub = pool(a, window, 1), pool(b, window, 1)
    vaa, vbb, vab = pool(a * a, window, 1) - ua**2, pool(b * b, window, 1) - ub**2, pool(a * b, window, 1) - ua * ub
    c1, c2 = _K1**2, _K2**2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (vaa + vbb + c2))
    return s.flatten(1).mean(1).float()


def map_similarity(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sample, the Spearman rank correlation and the SSIM of the absolute maps ``a`` and ``b`` ``(N, H, W)``;
    both NaN where either map is constant (an all-zero map of a dead network is no evidence either way; averages
    leave it out)."""
    a, b = a.abs(), b.abs()
    constant = (a.flatten(1).amax(1) == a.flatten(1).amin(1)) | (b.flatten(1).amax(1) == b.flatten(1).amin(1))
    similar = ssim(a, b)
    return {"spearman": spearman(a, b), "ssim": torch.where(constant.to(similar.device), torch.nan, similar)}
