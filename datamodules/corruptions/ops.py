"""MedMNIST-C corruptions as batched, seeded tensor operations.

Every op takes float images ``(N, C, H, W)`` in [0, 1], one severity parameter as published in MedMNIST-C's registry
(Di Salvo et al. 2024) and a ``torch.Generator``, and returns float images in [0, 1]. MedMNIST-C defines its
parameters on 224 px images. Spatial parameters (blur sigmas and radii) are scaled by ``sqrt(size / 224)``: strictly
proportional scaling would leave a 28 px image a blur of 0.1-0.3 px, invisible at every severity. Shrinking blur less
than the image is what CIFAR-10-C and Tiny-ImageNet-C did relative to ImageNet-C. Intensity parameters (noise,
brightness, contrast, gamma, JPEG quality, pixelation factor) are size-free and used as published.

MedMNIST-C corrupts grey-scale images as RGB and converts back with ITU-R 601 luma weights, so independent per-channel
noise reaches the grey image with a standard deviation 0.67 times the nominal one. :func:`_channel_noise` reproduces
that, so our statistics match the reference's.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.io import decode_jpeg, encode_jpeg

LUMA = torch.tensor([0.299, 0.587, 0.114])
REFERENCE_SIZE = 224


def spatial_scale(size: int) -> float:
    """Factor applied to MedMNIST-C's 224 px blur parameters at ``size`` px."""
    return math.sqrt(size / REFERENCE_SIZE)


def _channel_noise(x: torch.Tensor, g: torch.Generator, draw: str, **kw: float) -> torch.Tensor:
    """Noise per pixel as MedMNIST-C draws it: per RGB channel, then luma-combined for grey-scale images."""
    channels = 3 if x.shape[1] == 1 else x.shape[1]
    shape = (x.shape[0], channels, *x.shape[2:])
    if draw == "normal":
        noise = torch.randn(shape, generator=g, dtype=x.dtype) * kw["scale"]
    else:  # uniform
        noise = torch.rand(shape, generator=g, dtype=x.dtype)
    if x.shape[1] == 1 and draw == "normal":
        noise = (noise * LUMA.view(1, 3, 1, 1).to(x.dtype)).sum(1, keepdim=True)
    return noise


def gaussian_noise(x: torch.Tensor, scale: float, g: torch.Generator, size: int) -> torch.Tensor:
    return (x + _channel_noise(x, g, "normal", scale=scale)).clamp(0, 1)


def speckle_noise(x: torch.Tensor, scale: float, g: torch.Generator, size: int) -> torch.Tensor:
    return (x + x * _channel_noise(x, g, "normal", scale=scale)).clamp(0, 1)


def impulse_noise(x: torch.Tensor, amount: float, g: torch.Generator, size: int) -> torch.Tensor:
    """Salt and pepper: a fraction ``amount`` of values set to 0 or 1 with equal odds (skimage's ``s&p``)."""
    channels = 3 if x.shape[1] == 1 else x.shape[1]
    u = torch.rand((x.shape[0], channels, *x.shape[2:]), generator=g)
    salt = torch.rand(u.shape, generator=g) < 0.5
    rgb = x.expand(-1, channels, -1, -1).clone()
    hit = u < amount
    rgb[hit] = salt[hit].to(x.dtype)
    if x.shape[1] == 1:
        return (rgb * LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True).clamp(0, 1)
    return rgb


def shot_noise(x: torch.Tensor, mult: float, g: torch.Generator, size: int) -> torch.Tensor:
    """Poisson noise ``Poisson(x * mult) / mult``: smaller ``mult``, stronger noise."""
    channels = 3 if x.shape[1] == 1 else x.shape[1]
    rgb = x.expand(-1, channels, -1, -1)
    noisy = torch.poisson(rgb * mult, generator=g) / mult
    if x.shape[1] == 1:
        noisy = (noisy.clamp(0, 1) * LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return noisy.clamp(0, 1)


def pixelate(x: torch.Tensor, factor: float, g: torch.Generator, size: int) -> torch.Tensor:
    """Box-downsample to ``factor`` of the side, then back up, exactly as PIL's BOX resize that MedMNIST-C uses."""
    h, w = x.shape[-2:]
    small_h, small_w = max(1, int(h * factor)), max(1, int(w * factor))
    down = _box_resize(x, small_h, small_w)
    return _box_resize(down, h, w)


def _box_resize(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """PIL's separable BOX resampling (horizontal pass, 8-bit rounding, vertical pass), as matrix products."""
    wh, ww = _pil_box_weights(x.shape[-2], out_h), _pil_box_weights(x.shape[-1], out_w)
    horizontal = torch.einsum("nchw,vw->nchv", x, ww.to(x.dtype))
    horizontal = (horizontal * 255).round() / 255
    return (torch.einsum("nchw,uh->ncuw", horizontal, wh.to(x.dtype)) * 255).round() / 255


def _pil_box_weights(in_size: int, out_size: int) -> torch.Tensor:
    """``(out, in)`` coefficients of PIL's ``precompute_coeffs`` for the box filter (support 0.5)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        for j in range(xmin, xmax):
            t = (j - center + 0.5) / filterscale
            weights[xx, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
        weights[xx] /= weights[xx].sum().clamp_min(1e-12)
    return weights


def jpeg_compression(x: torch.Tensor, quality: float, g: torch.Generator, size: int) -> torch.Tensor:
    encoded = encode_jpeg([img for img in _to_uint8(x)], quality=int(quality))
    return torch.stack([decode_jpeg(e) for e in encoded]).float() / 255


def gaussian_blur(x: torch.Tensor, kernel: float, g: torch.Generator, size: int) -> torch.Tensor:
    """torchvision's Gaussian blur with the kernel's implied sigma scaled to this image size."""
    sigma = (0.3 * ((kernel - 1) * 0.5 - 1) + 0.8) * spatial_scale(size)
    k = max(3, 2 * math.ceil(3 * sigma) + 1)
    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def defocus_blur(x: torch.Tensor, param: tuple[float, float], g: torch.Generator, size: int) -> torch.Tensor:
    """Convolution with an anti-aliased disk of ``radius`` (scaled to this size)."""
    radius, alias = param
    radius = radius * spatial_scale(size)
    half = max(1, math.ceil(radius) + 1)
    grid = torch.arange(-half, half + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= max(radius, 0.5) ** 2).float()
    disk = TF.gaussian_blur(disk[None, None], kernel_size=[3, 3], sigma=[max(alias, 1e-3)] * 2)[0, 0]
    return _convolve(x, disk / disk.sum())


def motion_blur(x: torch.Tensor, param: tuple[float, float], g: torch.Generator, size: int) -> torch.Tensor:
    """One-sided Gaussian streak of ``radius`` and ``sigma`` (scaled) at a random angle in [-45, 45] degrees per image,
    as ImageMagick's motion blur that MedMNIST-C calls."""
    radius, sigma = (p * spatial_scale(size) for p in param)
    length = max(1, math.ceil(radius))
    angles = (torch.rand(x.shape[0], generator=g) * 90 - 45) * math.pi / 180
    out = torch.empty_like(x)
    for i, angle in enumerate(angles.tolist()):
        kernel = torch.zeros(2 * length + 1, 2 * length + 1)
        for t in range(length + 1):
            weight = math.exp(-(t**2) / (2 * max(sigma, 1e-3) ** 2))
            row, col = length - t * math.sin(angle), length + t * math.cos(angle)
            _splat(kernel, row, col, weight)
        out[i : i + 1] = _convolve(x[i : i + 1], kernel / kernel.sum())
    return out


def brightness(x: torch.Tensor, factor: float, g: torch.Generator, size: int) -> torch.Tensor:
    return TF.adjust_brightness(x, factor)


def contrast(x: torch.Tensor, factor: float, g: torch.Generator, size: int) -> torch.Tensor:
    return TF.adjust_contrast(x, factor)


def gamma_correction(x: torch.Tensor, gamma: float, g: torch.Generator, size: int) -> torch.Tensor:
    return TF.adjust_gamma(x, gamma)


def saturate(x: torch.Tensor, shift: float, g: torch.Generator, size: int) -> torch.Tensor:
    """Add ``shift`` to the HSV saturation (RGB images)."""
    if x.shape[1] != 3:
        return x
    maxc, minc = x.amax(1), x.amin(1)
    sat = torch.where(maxc > 0, (maxc - minc) / maxc.clamp_min(1e-8), torch.zeros_like(maxc))
    new_sat = (sat + shift).clamp(0, 1)
    # Scale each pixel's distance from its max channel so that (max - min) / max becomes the new saturation.
    ratio = torch.where(sat > 0, new_sat / sat.clamp_min(1e-8), torch.zeros_like(sat))
    out = maxc[:, None] - (maxc[:, None] - x) * ratio[:, None]
    # Grey pixels have hue 0 in skimage's HSV (red): R stays at V, G and B drop to V * (1 - S').
    grey = (sat == 0)[:, None].expand_as(x)
    red_hue = torch.stack([maxc, maxc * (1 - new_sat), maxc * (1 - new_sat)], dim=1)
    return torch.where(grey, red_hue, out).clamp(0, 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.to(x.dtype)
    pad = (k.shape[1] // 2, k.shape[1] // 2, k.shape[0] // 2, k.shape[0] // 2)
    padded = F.pad(x, pad, mode="reflect" if min(x.shape[-2:]) > max(pad) else "replicate")
    weight = k.expand(x.shape[1], 1, *k.shape)
    return F.conv2d(padded, weight, groups=x.shape[1]).clamp(0, 1)


def _splat(kernel: torch.Tensor, row: float, col: float, weight: float) -> None:
    """Add ``weight`` at a sub-pixel position, shared bilinearly among the four neighbours."""
    r0, c0 = math.floor(row), math.floor(col)
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        r, c = r0 + dr, c0 + dc
        if 0 <= r < kernel.shape[0] and 0 <= c < kernel.shape[1]:
            kernel[r, c] += weight * (1 - abs(row - r)) * (1 - abs(col - c))


def black_corner(x: torch.Tensor, multiplier: float, g: torch.Generator, size: int) -> torch.Tensor:
    """Black outside a centred disk of ``multiplier`` times the inscribed radius (a dermatoscope's vignette)."""
    h, w = x.shape[-2:]
    cy, cx = h // 2, w // 2
    radius = min(cx, cy, w - cx, h - cy) * multiplier
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2
    return x * inside.to(x.dtype)


def bubble(x: torch.Tensor, param: tuple[float, float], g: torch.Generator, size: int) -> torch.Tensor:
    """Translucent white bubbles (alpha 100/255 inside, 130/255 on a rim), 7 to ``max_bubbles`` per image with radii 3
    to ``max_radius`` (224 px units, scaled), composited as PIL pastes MedMNIST-C's RGBA bubble layer."""
    max_radius, max_bubbles = param
    scale = spatial_scale(size)
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        alpha = torch.zeros(h, w, dtype=x.dtype)
        count = int(torch.randint(7, int(max_bubbles) + 1, (1,), generator=g))
        for _ in range(count):
            radius = float(torch.randint(3, int(max_radius) + 1, (1,), generator=g)) * scale
            cy, cx = (float(torch.rand(1, generator=g)) * (n - 2 * radius) + radius for n in (h, w))
            dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
            alpha[dist2 <= (radius + 2 * scale) ** 2] = 130 / 255
            alpha[dist2 <= radius**2] = 100 / 255
        out[i] = x[i] * (1 - alpha) + alpha
    return out


def zoom_blur(x: torch.Tensor, param: tuple[float, float], g: torch.Generator, size: int) -> torch.Tensor:
    """Average of the image zoomed by 1, 1 + step, ... below ``max_zoom`` about its centre (MedMNIST-C's zoom blur)."""
    max_zoom, step = param
    h = x.shape[-1]
    factors = torch.arange(1.0, max_zoom, step).tolist()
    acc = torch.zeros_like(x)
    for zoom in factors:
        crop = math.ceil(h / zoom)
        top = (h - crop) // 2
        zoomed = F.interpolate(
            x[..., top : top + crop, top : top + crop], size=round(crop * zoom), mode="bilinear", align_corners=False
        )
        trim = (zoomed.shape[-1] - h) // 2
        acc += zoomed[..., trim : trim + h, trim : trim + h]
    return ((x + acc) / (len(factors) + 1)).clamp(0, 1)


# ------------------------------------------------------------------------------------------------- occlusions
# Stains and characters are objects laid on the slide or the photo. They are placed on MedMNIST-C's 224 px grid with
# its random draws and scaled in proportion to the image, so they cover the same fraction of it at every size (at
# 28 px a stain is 3 to 5 px across, a word a faint streak, as they would be if the 224 px image were downsampled).
_INKS: dict[int, torch.Tensor] = {}
# Hershey duplex at scale s is about 16.4 * s px per letter; Pillow's bundled font at size z about 0.556 * z.
HERSHEY_TO_PIL = 16.4 / 0.556


def inks(ink_set: int) -> torch.Tensor:
    """MedMNIST-C's ink-blot masks (Apache-2.0, vendored bit-packed): ``(10, s, s)`` floats, s = 12..42 px at 224."""
    if not _INKS:
        from importlib.resources import files

        import numpy as np

        with (
            files("medrobust.datamodules.corruptions").joinpath("assets/inks.npz").open("rb") as fh,
            np.load(fh) as npz,
        ):
            for key in range(1, 6):
                shape = tuple(npz[f"shape_{key}"])
                bits = np.unpackbits(npz[f"ink_{key}"], axis=1)[:, : shape[1] * shape[2]]
                _INKS[key] = torch.from_numpy(bits.reshape(shape).astype(np.float32))
    return _INKS[ink_set]


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high], both included (Python's ``random.randint``)."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _blot_alpha(
    mask: torch.Tensor, x0: float, y0: float, x1: float, y1: float, up: int
) -> tuple[torch.Tensor, int, int]:
    """``mask`` stretched over the box (x0, y0)-(x1, y1) of this image's grid, as coverage per pixel: drawn ``up``
    times finer, then area-averaged. Returns the coverage and the box's first row and column."""
    c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    canvas = torch.zeros(((r1 - r0) * up, (c1 - c0) * up))
    fine = F.interpolate(mask[None, None], size=(round((y1 - y0) * up), round((x1 - x0) * up)), mode="nearest")[0, 0]
    oy, ox = round((y0 - r0) * up), round((x0 - c0) * up)
    fh, fw = min(fine.shape[0], canvas.shape[0] - oy), min(fine.shape[1], canvas.shape[1] - ox)
    canvas[oy : oy + fh, ox : ox + fw] = fine[:fh, :fw]
    return F.avg_pool2d(canvas[None, None], up)[0, 0], r0, c0


def _paint(image: torch.Tensor, alpha: torch.Tensor, r0: int, c0: int, color: torch.Tensor | float) -> None:
    """Lay ``color`` over ``image`` (C, H, W) in place with coverage ``alpha`` from row ``r0``, column ``c0``,
    clipped to the image."""
    r1, c1 = min(image.shape[-2], r0 + alpha.shape[0]), min(image.shape[-1], c0 + alpha.shape[1])
    alpha = alpha[: r1 - r0, : c1 - c0].to(image.dtype)
    region = image[:, r0:r1, c0:c1]
    image[:, r0:r1, c0:c1] = region * (1 - alpha) + torch.as_tensor(color, dtype=image.dtype).view(-1, 1, 1) * alpha


@functools.lru_cache(maxsize=64)
def _font(size: int) -> object:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def stain_deposit(x: torch.Tensor, param: tuple[int, int], g: torch.Generator, size: int) -> torch.Tensor:
    """1 to ``max_marks`` black ink blots per image (one mark when ``max_marks`` is 1), each darkening every channel
    by its mask: MedMNIST-C's stain deposit, with its blots scaled to this size (area-averaged, so edges are soft)."""
    max_marks, ink_set = param
    masks = inks(ink_set)
    ref = REFERENCE_SIZE
    h, w = x.shape[-2:]
    sx, sy = w / ref, h / ref
    up = max(1, math.ceil(8 / min(sx, sy)))
    out = x.clone()
    for i in range(x.shape[0]):
        count = _randint(1, max_marks, g) if max_marks > 1 else max_marks
        for _ in range(count):
            ink = masks[_randint(0, len(masks) - 1, g)]
            side = ink.shape[-1]
            left, top = _randint(10, ref - side - 10, g), _randint(10, ref - side - 10, g)
            alpha, r0, c0 = _blot_alpha(ink, left * sx, top * sy, (left + side) * sx, (top + side) * sy, up)
            _paint(out[i], alpha, r0, c0, 0.0)  # black ink
    return out


def characters(x: torch.Tensor, param: tuple[int, int, float], g: torch.Generator, size: int) -> torch.Tensor:
    """1 to ``max_words`` random lower-case words of 3 to ``max_letters`` letters, each in a random colour, at font
    scales 0.14 to ``max_font_scale`` of OpenCV's Hershey duplex font on the 224 px grid, as MedMNIST-C writes them
    (rendered with Pillow's bundled FreeType font, sized to match Hershey's text width, with a stroke that stands in
    for Hershey's 1 px lines at 224 px, drawn finely and area-averaged; its mean change per pixel is within 10% of
    the reference's)."""
    import numpy as np
    from PIL import Image, ImageDraw

    max_words, max_letters, max_scale = param
    ref = REFERENCE_SIZE
    h, w = x.shape[-2:]
    scale = w / ref
    out = x.clone()
    for i in range(x.shape[0]):
        for _ in range(_randint(1, max_words, g)):
            letters = _randint(3, max_letters, g)
            font_scale = _randint(14, int(max_scale * 100), g) / 100
            text = "".join(chr(ord("a") + _randint(0, 25, g)) for _ in range(letters))
            left, baseline = _randint(10, ref - 8 * letters, g), _randint(10, ref - 10, g)
            color = torch.tensor([_randint(0, 255, g) for _ in range(3)], dtype=x.dtype) / 255
            if x.shape[1] == 1:
                color = (color * LUMA.to(x.dtype)).sum().reshape(1)
            px = font_scale * HERSHEY_TO_PIL * scale
            up = max(1, math.ceil(48 / px))
            font = _font(max(1, round(px * up)))
            x0, y0 = left * scale, baseline * h / ref
            c0, r0 = math.floor(x0), max(0, math.floor(y0 - 1.2 * px))
            c1, r1 = min(w, math.ceil(x0 + 0.7 * px * len(text)) + 1), min(h, math.ceil(y0 + 0.4 * px) + 1)
            if c1 <= c0 or r1 <= r0:
                continue
            layer = Image.new("L", ((c1 - c0) * up, (r1 - r0) * up))
            ImageDraw.Draw(layer).text(
                ((x0 - c0) * up, (y0 - r0) * up),
                text,
                fill=255,
                font=font,
                anchor="ls",
                stroke_width=round(up * scale / 12),
                stroke_fill=255,
            )
            fine = torch.from_numpy(np.asarray(layer, dtype=np.float32) / 255)
            _paint(out[i], F.avg_pool2d(fine[None, None], up)[0, 0], r0, c0, color)
    return out
