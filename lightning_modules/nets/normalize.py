"""Input normalisation as a layer, so that everything outside the model works in [0, 1] pixel units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medrobust.utilities.errors import InputError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every medrobust classifier.

    Keeping it inside the model means attack budgets (eps) and image corruptions are all in pixel units of [0, 1].

    Args:
        mean: per-channel means, or one value for all channels.
        std: per-channel standard deviations, or one value for all channels.
        in_chans: number of input channels; single values are broadcast to it.
    """

    def __init__(self, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,), in_chans: int = 1) -> None:
        super().__init__()
        mean_t = _per_channel(mean, in_chans, "mean")
        std_t = _per_channel(std, in_chans, "std")
        if (std_t <= 0).any():
            raise InputError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def values(self) -> tuple[list[float], list[float]]:
        """The per-channel mean and std as lists (what a config or checkpoint records)."""
        return self.mean.flatten().tolist(), self.std.flatten().tolist()

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _per_channel(values: Sequence[float], in_chans: int, name: str) -> torch.Tensor:
    values = list(values)
    if len(values) == 1:
        values = values * in_chans
    if len(values) != in_chans:
        raise InputError(f"{name} has {len(values)} values for {in_chans} input channels")
    return torch.tensor(values, dtype=torch.float32)
