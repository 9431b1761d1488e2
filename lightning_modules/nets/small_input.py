"""Adapting timm's ImageNet networks to 28-64 px inputs, the way the small-image literature does.

timm's ImageNet stems divide the image by 4 (ResNet: 7x7 stride-2 conv and a max-pool; ConvNeXt: 4x4 stride-4
patchify) or by 2 (EfficientNet) before the first block, so a 28 px image reaches ResNet-18's ``layer4`` as 1x1. The
MedMNIST v2 benchmark's "ResNet-18 (28)" is instead He et al.'s CIFAR network: a 3x3 stride-1 stem and no max-pool.

``small_input=True`` on :class:`~medrobust.lightning_modules.classifier.ClassifierModule` (and
:func:`small_input_kwargs` +
:func:`adapt_small_input` here) gives, per family:

* **ResNet** (``resnet*``, any depth and stem type): a fresh 3x3 stride-1 stem convolution (a deep stem keeps its
  convolutions with the first one's stride set to 1) and no max-pool. ``layer1`` runs at the input's resolution;
  ``layer4`` is 4x4 at 28 px, 8x8 at 64 px.
* **ConvNeXt**: a fresh 3x3 stride-1 stem instead of the 4x4 stride-4 patchify; ``stages.3`` is 3x3 at 28 px.
* **EfficientNet** (``efficientnet_*``, ``tf_efficientnet_*``): the 3x3 stem convolution at stride 1 (its weights
  kept); the deepest block is 2x2 at 28 px.
* **ViT** (``vit_*``): timm's own ``img_size`` and ``patch_size``: the largest of 16, 8, 4, 2 that gives at least a
  7x7 token grid (4 at 28 px, 8 at 64 px), unless ``timm_kwargs`` names one.

timm's ``feature_info`` reductions are rescaled with the stem, so feature taps, Grad-CAM's layer choice and anything
else reading them see the sizes the network really produces. A replaced stem is freshly initialised even with
``pretrained=True`` (a warning says so).
"""

from __future__ import annotations

import warnings

import timm
from torch import nn

from medrobust.utilities.errors import InputError

#: family -> the timm module its models are defined in
FAMILIES = {
    "resnet": "timm.models.resnet",
    "convnext": "timm.models.convnext",
    "efficientnet": "timm.models.efficientnet",
    "vit": "timm.models.vision_transformer",
}
VIT_PATCHES = (16, 8, 4, 2)
MIN_TOKENS_PER_SIDE = 7


def family(model_name: str) -> str:
    """The small-input family of a timm model name; anything else is refused, naming the supported families."""
    module = timm.models.model_entrypoint(model_name).__module__
    for name, where in FAMILIES.items():
        if module == where and not (name == "efficientnet" and "efficientnet" not in model_name):
            return name
    raise InputError(
        f"small_input cannot adapt {model_name!r} (defined in {module}); supported families: "
        f"{', '.join(FAMILIES)} (e.g. resnet18, resnet50, convnext_atto, efficientnet_b0, vit_tiny_patch16_224). "
        "Set small_input: false to use it with its ImageNet stem."
    )


def vit_patch_size(input_size: int) -> int:
    """The largest patch of :data:`VIT_PATCHES` dividing ``input_size`` with at least a 7x7 token grid."""
    for patch in VIT_PATCHES:
        if input_size % patch == 0 and input_size // patch >= MIN_TOKENS_PER_SIDE:
            return patch
    raise InputError(f"No ViT patch size in {VIT_PATCHES} divides {input_size} px into at least a 7x7 token grid")


def small_input_kwargs(model_name: str, input_size: int | None, timm_kwargs: dict) -> dict:
    """The extra ``timm.create_model`` arguments a family needs at build time (ViT's ``img_size``/``patch_size``)."""
    if family(model_name) != "vit":
        return {}
    if input_size is None:
        raise InputError(
            f"small_input for {model_name!r} needs the input size for its token grid: set model.input_size (the CLI "
            "links it from data.size)"
        )
    kwargs = {"img_size": input_size}
    if "patch_size" not in timm_kwargs:
        kwargs["patch_size"] = vit_patch_size(input_size)
    return kwargs


def adapt_small_input(model_name: str, backbone: nn.Module, pretrained: bool = False) -> nn.Module:
    """Rewrite ``backbone``'s stem in place for 28-64 px inputs (see the module docstring) and rescale its
    ``feature_info``; returns it."""
    kind = family(model_name)
    if kind == "vit":
        return backbone  # built with img_size/patch_size already; timm's feature_info follows the patch size
    if kind == "resnet":
        stem = backbone.conv1
        if isinstance(stem, nn.Conv2d):
            backbone.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
        else:  # deep stem: a Sequential of 3x3 convolutions, the first at stride 2
            first = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
            first.stride = (1, 1)
        backbone.maxpool = nn.Identity()
        scale = {"act1": 2}  # the stem's own output lost only the conv stride; everything after also the max-pool
        default = 4
    elif kind == "convnext":
        conv = backbone.stem[0]
        backbone.stem[0] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1)
        scale, default = {}, conv.stride[0]
    else:  # efficientnet
        backbone.conv_stem.stride = (1, 1)
        scale, default = {}, 2
    if pretrained and kind in ("resnet", "convnext"):
        warnings.warn(f"small_input replaces {model_name}'s stem convolution: it is trained from scratch", stacklevel=2)
    for entry in backbone.feature_info:
        entry["reduction"] = max(1, entry["reduction"] // scale.get(entry["module"], default))
    return backbone
