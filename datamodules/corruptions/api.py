"""Apply a named MedMNIST-C corruption to a batch, deterministically for a seed, with clear errors on bad input."""

from __future__ import annotations

import zlib

import torch

from medrobust.datamodules.corruptions import ops
from medrobust.datamodules.corruptions.registry import NOT_IMPLEMENTED, OPERATION, SEVERITY_PARAMS
from medrobust.utilities.errors import InputError

SEVERITIES = (1, 2, 3, 4, 5)


def corruptions_for(flag: str) -> list[str]:
    """The corruptions MedMNIST-C defines for ``flag`` that medrobust implements, in registry order."""
    if flag not in SEVERITY_PARAMS:
        raise InputError(f"MedMNIST-C defines no corruptions for {flag!r}; it covers {sorted(SEVERITY_PARAMS)}")
    return [name for name in SEVERITY_PARAMS[flag] if name not in NOT_IMPLEMENTED]


def check(flag: str, name: str, severity: int) -> None:
    """Raise a ValueError listing the valid choices when ``name`` or ``severity`` does not apply to ``flag``."""
    valid = corruptions_for(flag)
    if name not in valid:
        if name in SEVERITY_PARAMS[flag] and name in NOT_IMPLEMENTED:
            raise InputError(f"Corruption {name!r} of {flag} is not implemented in medrobust yet; valid: {valid}")
        known = name in OPERATION or name in NOT_IMPLEMENTED
        why = f"does not apply to {flag}'s modality" if known else "is unknown"
        raise InputError(f"Corruption {name!r} {why}. Valid corruptions for {flag}: {valid}")
    if severity not in SEVERITIES:
        raise InputError(f"Severity {severity!r} is outside 1..5 (valid: {list(SEVERITIES)})")


def corrupt(images: torch.Tensor, flag: str, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt uint8 images ``(N, C, H, W)``; returns uint8 of the same shape.

    The result depends only on (images, flag, name, severity, seed): the generator is seeded from all of them.
    """
    check(flag, name, severity)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise InputError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    param = SEVERITY_PARAMS[flag][name][severity - 1]
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{flag}/{name}/{severity}".encode()))
    op = getattr(ops, OPERATION[name])
    x = images.float() / 255
    out = op(x, param, generator, images.shape[-1])
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)
