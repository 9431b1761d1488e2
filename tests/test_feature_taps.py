"""Feature taps: equal to timm's own intermediate features, only of the training forward, and named clearly."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import quiet_trainer
from lightning.pytorch import Callback

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule, TrainingStep
from medrobust.lightning_modules.features.feature_taps import capture, feature_map, feature_names
from medrobust.utilities.errors import InputError

MODELS = [
    ("resnet18", {}),
    ("efficientnet_b0", {}),
    ("convnext_atto", {}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
]


@pytest.mark.parametrize(("name", "kwargs"), MODELS, ids=[m[0] for m in MODELS])
def test_taps_equal_timms_forward_intermediates(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=2, in_chans=1, **kwargs).eval()
    x = torch.rand(2, 1, 32, 32)
    names = feature_names(net)
    with torch.no_grad(), capture(net, names) as features:
        logits = net(x)
    with torch.no_grad():  # timm's reference: one pass, no hooks
        extra = {"indices": len(names), "norm": False} if "vit" in name else {}
        final, intermediates = net.forward_intermediates(x, **extra)
        assert torch.equal(net.forward_head(final), logits)
    assert len(intermediates) == len(names)
    for tap, reference in zip(names, intermediates, strict=True):
        assert torch.equal(feature_map(features[tap], net), reference), tap
    assert not any(m._forward_hooks for m in net.modules())  # hooks lived for that one call only


def test_unknown_tap_lists_the_valid_names() -> None:
    model = ClassifierModule("resnet18", 2, 1)
    with pytest.raises(InputError, match=r"layer1, layer2, layer3, layer4"):
        model.request_features("x", ["layer5"])
    model.request_features("x", ["layer3.1.conv2"])  # any module path also works
    assert model.requested_features == ("layer3.1.conv2",)


class TapRecorder(Callback):
    """Requests layer3 and checks, in its loss term, that the tap is the training forward's, on ``step.x``."""

    def __init__(self) -> None:
        self.checked = 0
        self.hooks_during_attack: list[int] = []

    def setup(self, trainer, pl_module, stage) -> None:
        self.module = pl_module
        pl_module.request_features("recorder", ["layer3"])
        pl_module.add_loss_term("recorder", self.term)
        pl_module.add_input_transform("hook_probe", self.no_hooks_here)

    def no_hooks_here(self, x, y):
        self.hooks_during_attack.append(len(self.module.net.backbone.layer3._forward_hooks))
        return x, y

    def term(self, step: TrainingStep) -> torch.Tensor:
        backbone = self.module.net.backbone
        with torch.no_grad():  # the same network, same mode, on the same input, without any tap
            _, intermediates = backbone.forward_intermediates(self.module.net.normalize(step.x), indices=[3])
        assert torch.equal(step.features["layer3"], intermediates[0])
        assert step.features["layer3"].requires_grad and len(step.features["layer3"]) == len(step.x)
        self.checked += 1
        return step.features["layer3"].sum() * 0

    def teardown(self, trainer, pl_module, stage) -> None:
        pl_module.release_features("recorder")
        pl_module.remove_loss_term("recorder")
        pl_module.remove_input_transform("hook_probe")


@pytest.mark.parametrize("recorder_first", [True, False])
def test_pgd_at_and_a_tap_see_the_training_forward_in_either_order(tmp_path, synthetic_npz, recorder_first) -> None:
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz(n=(32, 16, 16))), batch_size=16)
    recorder = TapRecorder()
    adversarial = AdversarialTraining(method="pgd", eps="8/255", steps=2)
    callbacks = [recorder, adversarial] if recorder_first else [adversarial, recorder]
    model = ClassifierModule("resnet18", 2, 1)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks, num_sanity_val_steps=0).fit(model, dm)
    assert recorder.checked == 2
    assert recorder.hooks_during_attack == [0, 0]  # transforms (the attack included) run before the tapped forward
    assert not model.requested_features  # released in teardown
