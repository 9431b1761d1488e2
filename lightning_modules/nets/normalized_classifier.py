"""A timm backbone behind a Normalize layer: the bare network that attacks and feature taps work on."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from medrobust.lightning_modules.nets.normalize import Normalize
from medrobust.lightning_modules.nets.small_input import adapt_small_input, small_input_kwargs
from medrobust.utilities.errors import InputError


class NormalizedClassifier(nn.Module):
    """``backbone(normalize(x))`` for images in [0, 1].

    Submodule paths read naturally for feature taps: ``backbone.layer3``, ``backbone.stages.2``.

    Args:
        normalize: the input normalisation layer.
        backbone: any classifier returning logits.
    """

    def __init__(self, normalize: Normalize, backbone: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.memory_format = torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.memory_format is not torch.contiguous_format and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return self.backbone(x)

    def use_channels_last(self) -> NormalizedClassifier:
        """Weights and inputs in channels-last memory format (what oneDNN's and cuDNN's bf16 kernels prefer); the
        numbers are the same, only the layout changes."""
        self.memory_format = torch.channels_last
        self.backbone.to(memory_format=torch.channels_last)
        return self

    @classmethod
    def from_timm(
        cls,
        model_name: str,
        num_classes: int,
        in_chans: int,
        pretrained: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        small_input: bool = False,
        input_size: int | None = None,
        **timm_kwargs: object,
    ) -> NormalizedClassifier:
        """Build from timm's registry; an unknown name raises with the closest valid names.

        ``mean``/``std`` default to the pretrained weights' own normalisation when ``pretrained``, else 0.5.
        ``small_input`` adapts the stem to 28-64 px images (:mod:`~medrobust.lightning_modules.nets.small_input`; a ViT
        needs ``input_size`` for its token grid).
        """
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise InputError(f"Unknown timm model {model_name!r}.{hint} See timm.list_models() for all names.")
        if small_input:
            timm_kwargs = {**timm_kwargs, **small_input_kwargs(model_name, input_size, timm_kwargs)}
        backbone = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **timm_kwargs
        )
        if small_input:
            adapt_small_input(model_name, backbone, pretrained)
        if mean is None or std is None:
            default_mean, default_std = (
                pretrained_normalization(model_name, in_chans) if pretrained else ((0.5,), (0.5,))
            )
            mean, std = mean or default_mean, std or default_std
        return cls(Normalize(mean, std, in_chans), backbone)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], pretrained: bool = False) -> NormalizedClassifier:
        """The network a ClassifierModule with these hyperparameters builds (``model_name``, ``num_classes``,
        ``in_chans``, ``mean``, ``std``, ``small_input``, ``input_size``, ``timm_kwargs``), freshly initialised and,
        unless ``pretrained``, never pretrained: the skeleton a checkpoint's weights are loaded into, or an untrained
        twin of a trained model."""
        return cls.from_timm(
            hparams["model_name"],
            hparams["num_classes"],
            hparams["in_chans"],
            pretrained,
            hparams.get("mean"),
            hparams.get("std"),
            bool(hparams.get("small_input", False)),
            hparams.get("input_size"),
            **(hparams.get("timm_kwargs") or {}),
        )


def pretrained_normalization(model_name: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std timm's pretrained weights of ``model_name`` were trained with (no network needed).

    For grey inputs, timm sums the first convolution's RGB filters, so a grey image acts like an RGB image with
    three equal channels; the mean of the three means (stds) is the single value closest to what the weights saw.
    """
    cfg = timm.get_pretrained_cfg(model_name) or {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    mean, std = tuple(cfg.get("mean", (0.5,))), tuple(cfg.get("std", (0.5,)))
    if in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std
