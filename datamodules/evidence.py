"""Known-region data: a label-carrying pattern injected at a random, recorded position, with its mask per image.

MedMNIST has no segmentation masks, so a saliency map cannot be scored against where the evidence is. This variant
puts the evidence somewhere known: every image of class ``k`` gets class ``k``'s pattern in a square of side
``size`` (a share of the image side) at a position drawn per image, in every split. The pattern is *added* to the
image (``contrast`` is its peak-to-peak amplitude in pixel units, clipped to [0, 1]), so the anatomy underneath stays
visible and still carries its own evidence; the pattern is the part whose location is known.

Patterns, one variant per class: ``bars`` (a square-wave grating whose orientation is ``180 * k / C`` degrees:
vertical bars for class 0, horizontal for class 1 of a binary task) and ``checker`` (a checkerboard with cells of
``1 + k // 3`` pixels, then vertical and horizontal stripes of that width, for ``k % 3`` = 0, 1, 2). Every class's
pattern must differ from every other's, also shifted by a pixel (at a random position a shifted copy tells no class
apart), and not be a plain square at the region's size (:func:`check_distinct`): a config whose classes would share
a pattern is refused, naming the most classes the pattern supports there. At 28 px with ``size: 0.25`` (a 7 px
region) bars serve up to 10 classes and checker up to 9; MedMNIST's 11 classes (OrganAMNIST) take checker with
``size: 0.3`` (8 px). Splits are built seeded and cached like the shift splits; the key covers the images and labels.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from medrobust.datamodules.cache import cache_root, save_atomic
from medrobust.utilities.errors import InputError

PATTERNS = ("bars", "checker")
#: bump when an injected pattern changes, so that stale caches are not reused
EVIDENCE_VERSION = 3


@dataclass(frozen=True)
class Evidence:
    """The injected evidence (``--data.evidence '{pattern: bars, size: 0.25, contrast: 0.4}'``).

    Attributes:
        pattern: ``bars`` or ``checker``.
        size: side of the square region as a share of the image side, in (0, 1].
        contrast: the pattern's peak-to-peak amplitude in pixel units, in (0, 1].
        seed: seed of the positions.
    """

    pattern: str = "bars"
    size: float = 0.25
    contrast: float = 0.4
    seed: int = 0

    @classmethod
    def parse(cls, spec: dict[str, Any] | Evidence) -> Evidence:
        if isinstance(spec, Evidence):
            return spec
        names = {f.name for f in fields(cls)}
        unknown = set(spec) - names
        if unknown:
            raise InputError(f"evidence {spec}: unknown keys {sorted(unknown)}; valid: {sorted(names)}")
        evidence = cls(**spec)
        if evidence.pattern not in PATTERNS:
            raise InputError(f"Unknown evidence pattern {evidence.pattern!r}; valid: {', '.join(PATTERNS)}")
        if not 0.0 < evidence.size <= 1.0 or not 0.0 < evidence.contrast <= 1.0:
            raise InputError(
                f"evidence size and contrast must be in (0, 1], got size {evidence.size}, contrast {evidence.contrast}"
            )
        return evidence

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        return hashlib.md5(f"{sorted(asdict(self).items())}v{EVIDENCE_VERSION}".encode()).hexdigest()[:12]


def side(evidence: Evidence, image_side: int) -> int:
    """The region's side in pixels: at least 3, so that every pattern shows at least one period."""
    return min(image_side, max(3, round(evidence.size * image_side)))


def pattern(evidence: Evidence, label: int, num_classes: int, n: int) -> torch.Tensor:
    """Class ``label``'s ``(n, n)`` pattern in {-0.5, 0.5}."""
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    if evidence.pattern == "bars":
        angle = math.pi * label / num_classes
        phase = x * math.cos(angle) + y * math.sin(angle)
        on = torch.floor(phase + 1e-9).remainder(2) == 0
    else:
        # three kinds per cell size (an inverted checkerboard would be the same one shifted by a cell)
        cell, kind = 1 + label // 3, label % 3
        cx, cy = torch.div(x, cell, rounding_mode="floor"), torch.div(y, cell, rounding_mode="floor")
        on = ((cx + cy) if kind == 0 else cx if kind == 1 else cy).remainder(2) == 0
    return on.float() - 0.5


def distinct_classes(evidence: Evidence, num_classes: int, n: int) -> bool:
    """Whether the first ``num_classes`` patterns at ``n`` px all differ, also after a shift of one pixel (at a random
    position, a pattern equal to another shifted by a pixel tells no class apart), and none is a plain square."""
    tiles = [pattern(evidence, k, num_classes, n) for k in range(num_classes)]
    if any(len(t.unique()) < 2 for t in tiles):
        return False
    return not any(_shifted_equal(a, b) for i, a in enumerate(tiles) for b in tiles[i + 1 :])


def _shifted_equal(a: torch.Tensor, b: torch.Tensor, shift: int = 1) -> bool:
    """Whether ``a`` equals ``b`` moved by up to ``shift`` pixels in each direction, on their overlap."""
    n = a.shape[0]
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            ys, xs = slice(max(0, dy), n + min(0, dy)), slice(max(0, dx), n + min(0, dx))
            yt, xt = slice(max(0, -dy), n + min(0, -dy)), slice(max(0, -dx), n + min(0, -dx))
            if torch.equal(a[ys, xs], b[yt, xt]):
                return True
    return False


def check_distinct(evidence: Evidence, num_classes: int, image_side: int) -> None:
    """Refuse a pattern that would give two classes the same evidence (or one a plain square) at this size, naming
    the largest class count it supports there."""
    n = side(evidence, image_side)
    if distinct_classes(evidence, num_classes, n):
        return
    most = max((c for c in range(2, num_classes) if distinct_classes(evidence, c, n)), default=1)
    raise InputError(
        f"evidence pattern {evidence.pattern!r} in a {n}x{n} px region ({evidence.size} of {image_side} px) gives "
        f"some of the {num_classes} classes the same pattern or a plain square; it supports at most {most} classes "
        "at this size: use a larger evidence size, or the other pattern"
    )


def inject(
    images: torch.Tensor, labels: torch.Tensor, evidence: Evidence, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, masks)``: uint8 ``(N, C, H, W)`` with each image's class pattern added at a seeded random position,
    and uint8 ``(N, H, W)`` masks (1 inside the region)."""
    n, _, h, w = images.shape
    s = side(evidence, min(h, w))
    generator = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, h - s + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - s + 1, (n,), generator=generator)
    tiles = torch.stack([pattern(evidence, k, num_classes, s) for k in range(num_classes)]) * evidence.contrast
    x = images.float() / 255
    masks = torch.zeros((n, h, w), dtype=torch.uint8)
    for i in range(n):
        top, left = int(tops[i]), int(lefts[i])
        region = x[i, :, top : top + s, left : left + s]
        x[i, :, top : top + s, left : left + s] = (region + tiles[int(labels[i])]).clamp(0, 1)
        masks[i, top : top + s, left : left + s] = 1
    return (x * 255).round().to(torch.uint8), masks


def evidence_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    evidence: Evidence,
    num_classes: int,
    seed: int,
    cache_dir: str | os.PathLike | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`inject` on a split, from the cache when it holds the result (same images, labels, settings and seed)."""
    digest = hashlib.md5(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"evidence_{images.shape[-1]}_{digest}" / f"{evidence.key()}_{seed}.npz"
    if path.is_file():
        with np.load(path) as npz:
            return torch.from_numpy(npz["images"]), torch.from_numpy(npz["masks"])
    out, masks = inject(images, labels, evidence, num_classes, seed)
    save_atomic(path, {"images": out.numpy(), "masks": masks.numpy()})
    return out, masks
