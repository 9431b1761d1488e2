"""Switch a network to eval mode for an attack or for scoring, and put every submodule back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, restoring each submodule's own ``training`` flag in ``finally``.

    A submodule that was deliberately in eval mode (a frozen teacher, frozen BatchNorm) stays so, unlike ``net.train()``
    would leave it.
    """
    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes.items():
            module.training = training


@contextmanager
def attack_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm uses running statistics and is not updated) with gradients enabled, even inside
    ``torch.no_grad`` or ``torch.inference_mode`` (validation and test)."""
    with _evaluating(net), torch.inference_mode(False), torch.enable_grad():
        yield net


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode without gradients, e.g. to score adversarial images; every submodule's own mode is restored."""
    with _evaluating(net), torch.no_grad():
        yield net
