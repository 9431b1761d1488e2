"""SignedMargin: a binary two-logit network's outputs as signed margins, the quantity its saliency maps explain."""

from __future__ import annotations

import torch
from torch import nn

from medrobust.utilities.errors import InputError


class SignedMargin(nn.Module):
    """Output ``z_k - z_other`` for each class ``k`` of a two-logit head (``z - z.flip(1)``).

    A softmax over two logits depends on their difference only: adding the same value to both changes neither the
    prediction nor the probabilities, yet it changes a map of one logit. Explaining the margin removes that freedom,
    and the maps of the two classes are exact negatives of each other (for the linear attribution methods:
    integrated gradients, DeepLIFT, occlusion).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if z.ndim != 2 or z.shape[1] != 2:
            raise InputError(f"the signed margin needs a two-logit head; this network outputs {tuple(z.shape)}")
        return z - z.flip(1)
