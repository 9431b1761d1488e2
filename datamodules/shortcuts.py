"""Shortcut variants of a dataset: a spurious feature correlated with the label, injected seeded and cached.

``strength`` is the probability that a sample of ``target_class`` carries the feature; a sample of any other class
carries it with probability ``1 - strength`` (0.5: no correlation, 1: the feature gives the label away). Test splits:

* ``shortcut/aligned``: the same correlation as training;
* ``shortcut/flipped``: the reverse (``target_class`` carries it with probability ``1 - strength``);
* ``shortcut/absent``: nobody carries it (the clean test split).

Each carries per-sample group labels (1: carries the feature). Kinds, after Sun et al. (MICCAI 2023) and Boland et
al. (MELBA 2025): localised ``patch`` (a square of ``intensity``, side ``size`` of the image side, at a fixed corner or
a random position) and ``text`` (a stamped letter); diffuse ``intensity`` (every pixel ``+ shift``) and ``noise``
(Gaussian noise of std ``noise``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from medrobust.datamodules.cache import cache_root, save_atomic
from medrobust.utilities.errors import InputError

KINDS = ("patch", "text", "intensity", "noise")
#: bump when an injected feature changes, so that stale caches are not reused
SHORTCUT_VERSION = 2  # 2: the cache also holds the marker masks


@dataclass(frozen=True)
class Shortcut:
    """A spurious feature and its correlation with the label (``--data.shortcut '{kind: patch, strength: 0.95}'``).

    Attributes:
        kind: ``patch``, ``text`` (localised), ``intensity``, ``noise`` (diffuse).
        strength: P(carries | target class); other classes carry it with ``1 - strength``. In [0, 1].
        target_class: the class the feature points to.
        size: side of the patch or the text's height (at least 6 pixels), as a fraction of the image side.
        intensity: grey value of the patch or text, in [0, 1].
        position: ``fixed`` (top-left corner) or ``random`` (per image, seeded).
        shift: brightness added by ``intensity``, in [0, 1] pixel units.
        noise: std of the Gaussian noise added by ``noise``, in pixel units.
        text: the stamped text.
        train: inject into the training and validation splits (``false``: clean training data, the shortcut test
            splits are still built: the clean ceiling of a study).
        seed: seed of who carries the feature, random positions and noise.
    """

    kind: str
    strength: float = 0.95
    target_class: int = 1
    size: float = 0.15
    intensity: float = 1.0
    position: str = "fixed"
    shift: float = 0.1
    noise: float = 0.05
    text: str = "R"
    train: bool = True
    seed: int = 0

    @classmethod
    def parse(cls, spec: dict[str, Any] | Shortcut, num_classes: int) -> Shortcut:
        if isinstance(spec, Shortcut):
            return spec
        names = {f.name for f in fields(cls)}
        unknown = set(spec) - names
        if unknown or "kind" not in spec:
            raise InputError(f"shortcut {spec}: keys are {sorted(names)}, 'kind' required")
        shortcut = cls(**spec)
        if shortcut.kind not in KINDS:
            raise InputError(f"Unknown shortcut kind {shortcut.kind!r}; valid: {', '.join(KINDS)}")
        if not 0.0 <= shortcut.strength <= 1.0:
            raise InputError(f"shortcut strength must be in [0, 1] (a probability), got {shortcut.strength}")
        if not 0 <= shortcut.target_class < num_classes:
            raise InputError(f"shortcut target_class {shortcut.target_class} is not a class of 0..{num_classes - 1}")
        if not 0.0 < shortcut.size <= 1.0 or not 0.0 <= shortcut.intensity <= 1.0:
            raise InputError("shortcut size must be in (0, 1] and intensity in [0, 1]")
        if shortcut.position not in ("fixed", "random"):
            raise InputError(f"shortcut position must be 'fixed' or 'random', got {shortcut.position!r}")
        return shortcut

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        text = repr(sorted((k, v) for k, v in asdict(self).items() if k != "train"))
        return hashlib.md5(f"{text}v{SHORTCUT_VERSION}".encode()).hexdigest()[:12]


def carriers(labels: torch.Tensor, shortcut: Shortcut, correlation: str, seed: int) -> torch.Tensor:
    """Who carries the feature (bool ``(N,)``) under ``correlation``: ``aligned``, ``flipped`` or ``absent``."""
    if correlation == "absent":
        return torch.zeros(len(labels), dtype=torch.bool)
    strength = shortcut.strength if correlation == "aligned" else 1.0 - shortcut.strength
    p = torch.where(labels == shortcut.target_class, strength, 1.0 - strength)
    return torch.rand(len(labels), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < p


def inject(
    images: torch.Tensor, carry: torch.Tensor, shortcut: Shortcut, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, masks)``: uint8 ``(N, C, H, W)`` with the feature added where ``carry`` (the rest untouched), and
    for the localised kinds uint8 ``(N, H, W)`` marker masks (the patch's square or the letter's own pixels; empty
    for non-carriers). Diffuse kinds touch every pixel and have no masks (``None``)."""
    out = images.clone()
    index = carry.nonzero().flatten()
    localised = shortcut.kind in ("patch", "text")
    masks = torch.zeros((len(images), *images.shape[2:]), dtype=torch.uint8) if localised else None
    if len(index) == 0:
        return out, masks
    generator = torch.Generator().manual_seed(seed)
    x = out[index].float() / 255
    n, _, h, w = x.shape
    if shortcut.kind in ("patch", "text"):
        mask = _glyph(shortcut, h) if shortcut.kind == "text" else torch.ones(_side(shortcut, h), _side(shortcut, h))
        mh, mw = mask.shape
        for i in range(n):
            top, left = _position(shortcut, h, w, mh, mw, generator)
            region = x[i, :, top : top + mh, left : left + mw]
            x[i, :, top : top + mh, left : left + mw] = torch.where(mask > 0, shortcut.intensity, region)
            masks[index[i], top : top + mh, left : left + mw] = (mask > 0).to(torch.uint8)
    elif shortcut.kind == "intensity":
        x = x + shortcut.shift
    else:
        x = x + shortcut.noise * torch.randn(x.shape, generator=generator)
    out[index] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return out, masks


def _side(shortcut: Shortcut, h: int) -> int:
    return max(1, round(shortcut.size * h))


def _position(shortcut: Shortcut, h: int, w: int, mh: int, mw: int, generator: torch.Generator) -> tuple[int, int]:
    if shortcut.position == "fixed":
        margin = max(1, round(0.05 * h))
        return margin, margin
    top = int(torch.randint(0, h - mh + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - mw + 1, (1,), generator=generator))
    return top, left


def _glyph(shortcut: Shortcut, h: int) -> torch.Tensor:
    """The text rendered with PIL's built-in bitmap font, cropped, scaled to ``size * h`` pixels high (nearest)."""
    canvas = Image.new("L", (12 * len(shortcut.text) + 8, 20))
    ImageDraw.Draw(canvas).text((2, 2), shortcut.text, fill=255, font=ImageFont.load_default())
    glyph = canvas.crop(canvas.getbbox())
    height = min(max(6, _side(shortcut, h)), h - 2)  # below 6 pixels a letter is no longer a letter
    width = max(1, round(glyph.width * height / glyph.height))
    glyph = glyph.resize((min(width, h - 2), height), Image.BILINEAR)
    return torch.from_numpy(np.asarray(glyph) > 96).float()


def shortcut_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    shortcut: Shortcut,
    correlation: str,
    seed: int,
    cache_dir: str | os.PathLike | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(images, carries, masks)`` of a split under ``correlation`` (masks as :func:`inject`'s), from the cache when
    it holds them.

    The key covers the images and labels themselves (a subsample gets its own entry), the shortcut's settings, the
    correlation, the seed and :data:`SHORTCUT_VERSION`, so a cached split is identical to a rebuilt one.
    """
    digest = hashlib.md5(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    path = (
        cache_root(cache_dir) / f"shortcut_{images.shape[-1]}_{digest}" / f"{shortcut.key()}_{correlation}_{seed}.npz"
    )
    if path.is_file():
        with np.load(path) as npz:
            masks = torch.from_numpy(npz["masks"]) if "masks" in npz.files else None
            return torch.from_numpy(npz["images"]), torch.from_numpy(npz["carries"]), masks
    carry = carriers(labels, shortcut, correlation, seed)
    out, masks = inject(images, carry, shortcut, seed + 1)
    arrays = {"images": out.numpy(), "carries": carry.numpy()}
    save_atomic(path, arrays if masks is None else arrays | {"masks": masks.numpy()})
    return out, carry, masks
