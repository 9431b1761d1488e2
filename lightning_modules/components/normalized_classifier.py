"""A timm backbone behind a Normalize layer: the bare network that attacks and feature taps work on."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import timm
import torch
from torch import nn

from lightning_modules.components.normalize import Normalize


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    @classmethod
    def from_timm(
        cls,
        model_name: str,
        num_classes: int,
        in_chans: int,
        pretrained: bool = False,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        **timm_kwargs: object,
    ) -> NormalizedClassifier:
        """Build from timm's registry; an unknown name raises with the closest valid names."""
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown timm model {model_name!r}.{hint} See timm.list_models() for all names.")
        backbone = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **timm_kwargs
        )
        return cls(Normalize(mean, std, in_chans), backbone)
