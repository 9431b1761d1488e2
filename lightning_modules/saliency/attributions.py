"""Saliency maps through captum: gradient, integrated gradients, occlusion, DeepLIFT and Grad-CAM, as ``(N, H, W)``.

Every method explains the logit of ``target``, or on a binary two-logit head its signed margin ``z_target - z_other``
(``explain: margin``, :class:`~medrobust.lightning_modules.saliency.signed_margin.SignedMargin`), for images in
[0, 1] (the baseline of integrated gradients, occlusion and DeepLIFT is the black image, zero in pixel units;
normalisation lives inside the network). Channels are summed
(occlusion, whose window spans every channel, gives each the same value: one is taken). Maps are computed in eval
mode with gradients on, inside Lightning's inference-mode test loop too, and every submodule's mode is put back
(:func:`~medrobust.lightning_modules.nets.modes.attack_mode`).

Known pitfalls, handled here rather than rediscovered:

* captum's DeepLIFT has rules for ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, Softmax and max-pooling only; at
  any other nonlinearity (SiLU in EfficientNet, GELU and LayerNorm in ConvNeXt and ViT) it silently uses the plain
  gradient, so its map is no longer DeepLIFT. :func:`deeplift_blockers` names them and :class:`Explainer` refuses.
* Grad-CAM needs a spatial layer. timm's ResNet-18 divides a 28 px image by 32, so ``layer4`` is 1x1 and its map,
  upsampled, is constant. :func:`gradcam_layer` defaults to the deepest feature (timm's ``feature_info``) with at
  least 4x4 positions and says which it took.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from captum.attr import DeepLift, IntegratedGradients, LayerGradCam, Occlusion, Saliency
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import nn

from medrobust.lightning_modules.features.feature_taps import capture, feature_names, resolve_tap
from medrobust.lightning_modules.nets.modes import attack_mode
from medrobust.lightning_modules.saliency.signed_margin import SignedMargin
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)

METHODS = ("gradient", "integrated_gradients", "occlusion", "deeplift", "gradcam")
#: what the maps explain: the target's logit, or a two-logit head's signed margin
EXPLAINED = ("logit", "margin")
#: the fewest positions per side for which a Grad-CAM map is worth upsampling
GRADCAM_MIN_SIDE = 4
#: nonlinear modules outside torch.nn.modules.activation that captum's DeepLIFT would also pass through as gradients
_NONLINEAR_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class AttributionSettings:
    """Per-method settings.

    Attributes:
        ig_steps: integration steps of integrated gradients (Gauss-Legendre).
        occlusion_window: side of occlusion's square patch in pixels; default ``max(2, size // 7)`` (4 at 28 px).
        occlusion_stride: its stride; default half the window.
        gradcam_layer: the backbone module Grad-CAM reads (``layer3``, ``stages.2``); default
            :func:`gradcam_layer`'s choice.
        explain: ``logit`` (the target's logit) or ``margin`` (a two-logit head's ``z_target - z_other``).
    """

    ig_steps: int = 32
    occlusion_window: int | None = None
    occlusion_stride: int | None = None
    gradcam_layer: str | None = None
    explain: str = "logit"


def check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"Unknown saliency methods {unknown}; valid: {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def deeplift_blockers(net: nn.Module) -> dict[str, int]:
    """Nonlinear modules of ``net`` captum's DeepLIFT has no rule for (class name: count)."""
    found: dict[str, int] = {}
    for module in net.modules():
        where = type(module).__module__
        activation = where == "torch.nn.modules.activation" or "activations" in where
        supported = isinstance(module, tuple(SUPPORTED_NON_LINEAR))
        if (activation and not supported) or isinstance(module, _NONLINEAR_NORMS):
            found[type(module).__name__] = found.get(type(module).__name__, 0) + 1
    return found


def gradcam_layer(backbone: nn.Module, image_shape: tuple[int, int, int], name: str | None = None) -> tuple[str, int]:
    """``(layer name, side)``: ``name``, or the deepest ``feature_info`` feature with at least
    :data:`GRADCAM_MIN_SIDE` positions per side at ``image_shape`` ``(C, H, W)``; ``side`` is its smaller side."""
    candidates = [name] if name is not None else feature_names(backbone)
    if name is not None:
        resolve_tap(backbone, name)  # an unknown name raises, listing the feature names
    if not candidates:
        raise InputError(f"{type(backbone).__name__} has no feature_info; name a Grad-CAM layer (gradcam_layer)")
    device = next(backbone.parameters()).device
    with attack_mode(backbone), torch.no_grad(), capture(backbone, candidates) as features:
        backbone(torch.zeros((1, *image_shape), device=device))
    sides = {}
    for layer in candidates:
        shape = tuple(features[layer].shape)
        if len(shape) != 4:
            if name is not None:
                raise InputError(
                    f"Grad-CAM layer {layer!r} outputs {shape}, not a (B, C, H, W) map; choose a convolutional layer "
                    f"(feature names: {', '.join(feature_names(backbone))})"
                )
            continue
        sides[layer] = min(shape[2:])
    if name is not None:
        return name, sides[name]
    spatial = [layer for layer in candidates if sides.get(layer, 0) >= GRADCAM_MIN_SIDE]
    if not spatial:
        raise InputError(
            f"No feature of {type(backbone).__name__} has {GRADCAM_MIN_SIDE}x{GRADCAM_MIN_SIDE} positions at "
            f"{image_shape[1]}x{image_shape[2]} px (sides: {sides}); name a layer with gradcam_layer"
        )
    return spatial[-1], sides[spatial[-1]]


class Explainer:
    """One saliency method on one network: ``explainer(x, target) -> (N, H, W)`` maps.

    Args:
        net: the network, images in [0, 1] to logits; a :class:`NormalizedClassifier` (Grad-CAM layers are paths in
            its ``backbone``), or any module with ``gradcam_layer`` naming one of its own submodules.
        method: one of :data:`METHODS`.
        image_shape: ``(C, H, W)`` of the inputs.
        settings: per-method settings.
    """

    def __init__(
        self, net: nn.Module, method: str, image_shape: tuple[int, int, int], settings: AttributionSettings
    ) -> None:
        check_methods([method])
        if settings.explain not in EXPLAINED:
            raise InputError(f"explain must be one of {', '.join(EXPLAINED)}, got {settings.explain!r}")
        self.net, self.method, self.image_shape, self.settings = net, method, tuple(image_shape), settings
        self._explained = SignedMargin(net) if settings.explain == "margin" else net
        self.layer: str | None = None
        if method == "deeplift":
            blockers = deeplift_blockers(net)
            if blockers:
                raise InputError(
                    f"deeplift: captum's DeepLIFT has rules for ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, Softmax "
                    f"and max-pooling only; this network also has {blockers}, where it would silently use the plain "
                    "gradient. Use integrated_gradients for this architecture, or leave deeplift out."
                )
        if method == "gradcam":
            backbone = getattr(net, "backbone", net)
            self.layer, side = gradcam_layer(backbone, self.image_shape, settings.gradcam_layer)
            if side < 2:
                log.warning("Grad-CAM at %s: a %dx%d map is constant once upsampled", self.layer, side, side)
            elif settings.gradcam_layer is None:
                log.info(
                    "Grad-CAM reads %s (%dx%d), the deepest feature with >= %d positions a side",
                    self.layer,
                    side,
                    side,
                    GRADCAM_MIN_SIDE,
                )
            self._module = backbone.get_submodule(self.layer)

    @property
    def window(self) -> tuple[int, int]:
        """Occlusion's ``(window, stride)`` in pixels."""
        size = self.image_shape[-1]
        window = self.settings.occlusion_window or max(2, size // 7)
        return window, self.settings.occlusion_stride or max(1, window // 2)

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with attack_mode(self.net):
            x = x.detach().clone().requires_grad_(self.method != "occlusion")  # occlusion only runs forwards
            target = target.detach().clone().long()
            maps = self._attribute(x, target).detach()
        if self.method == "occlusion":
            return maps.mean(1)
        return maps.sum(1)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        net, zeros = self._explained, torch.zeros_like(x)
        if self.method == "gradient":
            return Saliency(net).attribute(x, target=target, abs=True)
        if self.method == "integrated_gradients":
            return IntegratedGradients(net).attribute(
                x, baselines=zeros, target=target, n_steps=self.settings.ig_steps, internal_batch_size=len(x) * 8
            )
        if self.method == "deeplift":
            return DeepLift(net).attribute(x, baselines=zeros, target=target)
        if self.method == "occlusion":
            window, stride = self.window
            c = x.shape[1]
            return Occlusion(net).attribute(
                x,
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=0.0,
                target=target,
                perturbations_per_eval=16,
            )
        cam = LayerGradCam(net, self._module).attribute(x, target=target, relu_attributions=True)
        return upsample_cells(cam, (x.shape[-2], x.shape[-1]))


def upsample_cells(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(N, 1, h, w)`` Grad-CAM map at the image's ``size``: each cell's value on the pixels it covers (an
    ``H/h x W/w`` block where the sides divide; otherwise each pixel takes the cell its centre falls in). Bilinear
    upsampling, captum's default, would spread a cell's value onto its neighbours' pixels, so a map scored against a
    mask would credit cells for pixels they never saw."""
    return torch.nn.functional.interpolate(cam, size=size, mode="nearest-exact")
