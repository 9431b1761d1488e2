"""small_input: feature-map sizes per family at 28 and 64 px, feature_info kept true, refusals, rebuilds, fast path."""

from __future__ import annotations

import math

import pytest
import torch

from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.features.feature_taps import capture, feature_names
from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier
from medrobust.utilities.errors import InputError

#: (model, size) -> spatial side of each feature_info feature after small_input
EXPECTED = {
    ("resnet18", 28): {"act1": 28, "layer1": 28, "layer2": 14, "layer3": 7, "layer4": 4},
    ("resnet18", 64): {"act1": 64, "layer1": 64, "layer2": 32, "layer3": 16, "layer4": 8},
    ("resnet50", 28): {"act1": 28, "layer1": 28, "layer2": 14, "layer3": 7, "layer4": 4},
    ("convnext_atto", 28): {"stages.0": 28, "stages.1": 14, "stages.2": 7, "stages.3": 3},
    ("convnext_atto", 64): {"stages.0": 64, "stages.1": 32, "stages.2": 16, "stages.3": 8},
    ("efficientnet_b0", 28): {"blocks.0": 28, "blocks.1": 14, "blocks.2": 7, "blocks.4": 4, "blocks.6": 2},
    ("efficientnet_b0", 64): {"blocks.0": 64, "blocks.1": 32, "blocks.2": 16, "blocks.4": 8, "blocks.6": 4},
}


def sides(net: NormalizedClassifier, size: int, in_chans: int = 1) -> dict[str, int]:
    names = feature_names(net.backbone)
    with torch.no_grad(), capture(net.backbone, names) as features:
        net.eval()(torch.rand(1, in_chans, size, size))
    return {name: features[name].shape[-1] for name in names}


@pytest.mark.parametrize(("model", "size"), list(EXPECTED))
def test_feature_sizes_and_feature_info(model, size) -> None:
    net = NormalizedClassifier.from_timm(model, 2, 1, small_input=True, input_size=size)
    measured = sides(net, size)
    assert measured == EXPECTED[model, size]
    for entry in net.backbone.feature_info:  # feature_info's reductions describe the network as it now is
        side = measured[entry["module"]]
        assert side in (math.floor(size / entry["reduction"]), math.ceil(size / entry["reduction"]))
    assert net(torch.rand(2, 1, size, size)).shape == (2, 2)


def test_imagenet_stem_for_contrast() -> None:
    net = NormalizedClassifier.from_timm("resnet18", 2, 1)
    assert sides(net, 28)["layer4"] == 1
    assert net.backbone.conv1.kernel_size == (7, 7)
    small = NormalizedClassifier.from_timm("resnet18", 2, 3, small_input=True)
    assert small.backbone.conv1.kernel_size == (3, 3) and small.backbone.conv1.stride == (1, 1)
    assert isinstance(small.backbone.maxpool, torch.nn.Identity) and small.backbone.conv1.in_channels == 3


@pytest.mark.parametrize(("size", "patch"), [(28, 4), (64, 8)])
def test_vit_patch_through_timm(size, patch) -> None:
    net = NormalizedClassifier.from_timm("vit_tiny_patch16_224", 2, 1, small_input=True, input_size=size)
    assert net.backbone.patch_embed.patch_size == (patch, patch)
    assert net.backbone.patch_embed.grid_size == (size // patch, size // patch)
    assert {entry["reduction"] for entry in net.backbone.feature_info} == {patch}
    names = feature_names(net.backbone)
    with torch.no_grad(), capture(net.backbone, names[-1:]) as features:
        net.eval()(torch.rand(1, 1, size, size))
    assert features[names[-1]].shape[1] == (size // patch) ** 2 + 1  # tokens plus the class token
    named = NormalizedClassifier.from_timm("vit_tiny_patch16_224", 2, 1, small_input=True, input_size=28, patch_size=2)
    assert named.backbone.patch_embed.grid_size == (14, 14)  # a patch size in timm_kwargs wins


def test_refusals_name_the_supported_families() -> None:
    for model in ("densenet121", "mobilenetv3_small_050"):
        with pytest.raises(InputError, match="supported families: resnet, convnext, efficientnet, vit"):
            NormalizedClassifier.from_timm(model, 2, 1, small_input=True)
    with pytest.raises(InputError, match="needs the input size"):
        NormalizedClassifier.from_timm("vit_tiny_patch16_224", 2, 1, small_input=True)
    NormalizedClassifier.from_timm("densenet121", 2, 1)  # without the option any timm model still builds


def test_checkpoint_rebuild_and_fast_path_numbers() -> None:
    module = ClassifierModule("resnet18", 2, 1, small_input=True, input_size=28)
    twin = NormalizedClassifier.from_hparams(module.hparams)
    twin.load_state_dict(module.net.state_dict())  # strict: the rebuilt network has the same shapes
    x = torch.rand(4, 1, 28, 28)
    fast = ClassifierModule("resnet18", 2, 1, small_input=True, input_size=28, channels_last=True)
    fast.net.load_state_dict(module.net.state_dict())
    module.eval(), fast.eval()
    torch.testing.assert_close(fast(x), module(x), atol=1e-5, rtol=1e-4)
    assert fast.net.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fast(x)
    assert low.dtype == torch.bfloat16 and (low.float() - module(x)).abs().max() < 0.1
