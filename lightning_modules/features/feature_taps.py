"""Feature taps: named intermediate features of one forward pass, captured by hooks that live for that call only.

A tap name is a module of the backbone: timm's ``feature_info`` names (``layer1``..``layer4`` for ResNets,
``stages.N`` for ConvNeXt, ``blocks.N`` for EfficientNet and ViT) or any other submodule path (``layer3.1.conv2``).
The captured tensor is exactly that module's output in the call (``torch.equal`` to a direct forward up to it).

Hooks rather than timm's ``forward_intermediates``: the one mechanism serves every timm model and every module path,
the training forward stays ``net(x)`` (so its logits are the ones the task loss sees), and a call without taps runs
no hook at all.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from medrobust.utilities.errors import InputError


def feature_names(backbone: nn.Module) -> list[str]:
    """The backbone's documented feature names (timm's ``feature_info``), in depth order."""
    info = getattr(backbone, "feature_info", None) or []
    return [entry["module"] for entry in info if "module" in entry]


def feature_channels(backbone: nn.Module, name: str) -> int | None:
    """Channels of feature ``name`` from ``feature_info``, or ``None`` for a name it does not list."""
    for entry in getattr(backbone, "feature_info", None) or []:
        if entry.get("module") == name:
            return int(entry["num_chs"])
    return None


def resolve_tap(backbone: nn.Module, name: str) -> nn.Module:
    """The submodule a tap name means; an unknown name raises, listing the backbone's feature names."""
    try:
        return backbone.get_submodule(name)
    except AttributeError:
        names = feature_names(backbone)
        close = difflib.get_close_matches(name, [n for n, _ in backbone.named_modules() if n], n=3)
        hint = f" Closest module paths: {', '.join(close)}." if close else ""
        raise InputError(
            f"No feature tap {name!r} in {type(backbone).__name__}. Feature names: {', '.join(names) or '(none)'}; "
            f"any submodule path also works.{hint}"
        ) from None


@contextlib.contextmanager
def capture(backbone: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of ``backbone`` records the outputs of the modules ``names`` into the yielded
    dict (the last call wins); the hooks are removed on exit, also on an exception."""
    features: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in dict.fromkeys(names):
            module = resolve_tap(backbone, name)
            handles.append(module.register_forward_hook(_recorder(features, name)))
        yield features
    finally:
        for handle in handles:
            handle.remove()


def _recorder(features: dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        features[name] = output

    return hook


def feature_map(feature: torch.Tensor, backbone: nn.Module | None = None) -> torch.Tensor:
    """A tap's output as a ``(B, C, H, W)`` map: conv features as they are; transformer tokens ``(B, N, C)`` without
    their prefix (class, register) tokens, on the patch grid when it is square, else as an ``(B, C, N, 1)`` column."""
    if feature.ndim == 4:
        return feature
    if feature.ndim == 2:
        return feature[:, :, None, None]
    if feature.ndim != 3:
        raise InputError(f"A feature tap of shape {tuple(feature.shape)} is neither a map nor a token sequence")
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
    tokens = feature[:, prefix:, :].transpose(1, 2)  # (B, C, N)
    n = tokens.shape[-1]
    side = round(n**0.5)
    if side * side == n:
        return tokens.reshape(len(tokens), -1, side, side)
    return tokens.unsqueeze(-1)


def pooled(feature: torch.Tensor, backbone: nn.Module | None = None) -> torch.Tensor:
    """Global average pooling of a tap to ``(B, C)``."""
    return feature_map(feature, backbone).mean(dim=(2, 3))
