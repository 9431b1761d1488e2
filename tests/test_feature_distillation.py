"""FeatureDistillation and the auxiliary-module seam, with real Trainers on synthetic MedMNIST-format files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from medrobust.callbacks.feature_distillation import FeatureDistillation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.utilities.errors import InputError

LAYERS = [
    {"student": "layer2", "teacher": "layer3", "loss": "mse"},  # 128 -> 256 channels, 4x4 -> 2x2: adapter + pooling
    {"student": "layer3", "loss": "cosine", "name": "layer3_cos"},
    {"student": "layer3", "loss": "attention", "name": "layer3_at"},
    {"student": "layer4", "loss": "probe_kl", "weight": 0.5},
]


def datamodule(synthetic_npz, flag: str = "pneumoniamnist") -> MedMNISTDataModule:
    return MedMNISTDataModule(flag, path=str(synthetic_npz(flag, n=(64, 32, 32))), batch_size=32)


@pytest.fixture
def teacher_ckpt(tmp_path: Path, synthetic_npz) -> Path:
    """A trained teacher of another architecture than the student, with its datamodule's hyperparameters."""
    dm = datamodule(synthetic_npz)
    teacher = ClassifierModule("resnet18", dm.num_classes, dm.in_chans, dm.task)
    trainer = quiet_trainer(tmp_path / "teacher", max_epochs=1)
    trainer.fit(teacher, dm)
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path


class Watch(Callback):
    """Checks the teacher stays frozen in eval mode, and records the optimizer's parameter groups."""

    def __init__(self, distillation: FeatureDistillation) -> None:
        self.distillation = distillation
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        net = self.distillation.teacher.net
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        assert all(p.grad is None for p in net.parameters())
        self.groups = [len(g["params"]) for g in trainer.optimizers[0].param_groups]
        self.aux_in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups[1:] for p in g["params"]} == {
            id(p) for p in pl_module.auxiliary.parameters()
        }
        self.checked += 1


def test_distilled_student_checkpoint_loads_and_tests_without_the_callback(
    tmp_path, synthetic_npz, teacher_ckpt
) -> None:
    dm = datamodule(synthetic_npz)
    distill = FeatureDistillation(str(teacher_ckpt), LAYERS, logit_weight=1.0, aux_lr=0.01)
    watch = Watch(distill)
    student = ClassifierModule("resnet34", dm.num_classes, dm.in_chans, dm.task)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[distill, watch, checkpoint], enable_checkpointing=True)
    trainer.fit(student, dm)
    assert watch.checked == 4 and watch.aux_in_optimizer
    assert watch.groups[1:] == [2, 2, 2]  # one group per auxiliary module (weight, bias): 2 adapters, 1 probe
    assert trainer.optimizers[0].param_groups[1]["lr"] == 0.01
    for name in ("layer2", "layer3_cos", "layer3_at", "layer4", "logits"):
        assert f"train/loss/distill/{name}_epoch" in trainer.callback_metrics
    assert len(student.auxiliary) == 0 and not student.loss_terms  # the callback removed what it registered

    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    fresh = ClassifierModule("resnet34", dm.num_classes, dm.in_chans, dm.task).state_dict()
    assert set(saved["state_dict"]) == set(fresh)  # no teacher, no adapters or probes among the model's weights
    assert {k.split(".")[1] for k in saved["auxiliary_state_dict"]} == {
        "distill_adapter_layer2",
        "distill_adapter_layer3_cos",
        "distill_probe_layer4",
    }
    loaded = ClassifierModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    tested = quiet_trainer(tmp_path).test(loaded, dm, verbose=False)[0]
    again = quiet_trainer(tmp_path).test(student, dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), verbose=False)
    assert tested == again[0]


class AuxAtStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.clone() for k, v in pl_module.auxiliary.state_dict().items()}


def test_resume_restores_adapters_and_probes(tmp_path, synthetic_npz, teacher_ckpt) -> None:
    dm = datamodule(synthetic_npz)
    layers = [{"student": "layer3", "loss": "mse"}, {"student": "layer4", "loss": "probe_kl"}]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = FeatureDistillation(str(teacher_ckpt), layers)
    student = ClassifierModule("resnet18", dm.num_classes, dm.in_chans, dm.task)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[first, checkpoint], enable_checkpointing=True).fit(student, dm)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["auxiliary_state_dict"]

    probe = AuxAtStart()
    resumed = ClassifierModule("resnet18", dm.num_classes, dm.in_chans, dm.task)
    callbacks = [FeatureDistillation(str(teacher_ckpt), layers), probe]
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks)
    trainer.fit(resumed, dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert probe.state.keys() == {k.removeprefix("auxiliary.") for k in saved}
    for key, value in probe.state.items():
        assert torch.equal(value, saved[f"auxiliary.{key}"]), key
    assert trainer.current_epoch == 2


def test_bad_input_is_refused_clearly(tmp_path, synthetic_npz, teacher_ckpt) -> None:
    with pytest.raises(InputError, match="does not exist"):
        FeatureDistillation(str(tmp_path / "missing.ckpt"), ["layer3"])
    with pytest.raises(InputError, match="Distillation loss 'l1' unknown"):
        FeatureDistillation(str(teacher_ckpt), [{"student": "layer3", "loss": "l1"}])
    dm = datamodule(synthetic_npz)

    def fit(callback: FeatureDistillation, data: MedMNISTDataModule = dm) -> None:
        model = ClassifierModule("resnet18", data.num_classes, data.in_chans, data.task)
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, data)

    with pytest.raises(InputError, match=r"No feature tap 'layer5'.*layer1, layer2, layer3, layer4"):
        fit(FeatureDistillation(str(teacher_ckpt), ["layer5"]))
    with pytest.raises(InputError, match="adapter"):
        fit(
            FeatureDistillation(
                str(teacher_ckpt), [{"student": "layer2", "teacher": "layer3", "loss": "mse", "adapter": False}]
            )
        )
    with pytest.raises(InputError, match="trained for"):
        fit(FeatureDistillation(str(teacher_ckpt), ["layer3"]), datamodule(synthetic_npz, "pathmnist"))


def test_a_resumed_student_refuses_a_teacher_name_that_now_means_another_checkpoint(tmp_path, teacher_ckpt) -> None:
    """Review of issue 24: `mlflow:<experiment>/teacher` resolves to the newest run of that name; a student resumed
    after the teacher was retrained would go on against the new one while its run records the old one."""
    from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger

    logger = MLflowRunLogger("distill", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logger.log_params({"distill.teacher.run_id": "a" * 32, "distill.teacher.md5": "1" * 32})
    callback = FeatureDistillation(teacher=str(teacher_ckpt), logit_weight=1.0)
    same = {"distill.teacher.run_id": "a" * 32, "distill.teacher.md5": "1" * 32}
    assert callback._teacher_changed(logger, same) == ""  # the teacher it started with: goes on
    changed = callback._teacher_changed(logger, {"distill.teacher.run_id": "b" * 32, "distill.teacher.md5": "2" * 32})
    assert re.search(r"distilled from teacher a{32} \(checkpoint MD5 1{32}\).*runs:/a{32}/", changed), changed


def test_teacher_probes_fit_out_of_sample_and_student_data_with_a_shortcut_is_refused(
    tmp_path, synthetic_npz, teacher_ckpt
) -> None:
    """Issue 25.17: the teacher's probes are fitted on its data's validation split (32 images here), never on the
    64 training images it memorised; probe_data: student is refused when the student's training split carries a
    shortcut."""
    from medrobust.lightning_modules.features.teacher import load_teacher

    distill = FeatureDistillation(str(teacher_ckpt), [{"student": "layer4", "loss": "probe_kl"}])
    distill.teacher = load_teacher(str(teacher_ckpt))
    images, labels = distill._probe_split(trainer=None)
    dm = datamodule(synthetic_npz)
    dm.setup("fit")
    assert len(labels) == len(dm.datasets["val"]) == 32 and torch.equal(images, dm.datasets["val"].images)
    shortcut = MedMNISTDataModule(
        "pneumoniamnist",
        path=str(synthetic_npz("pneumoniamnist", n=(64, 32, 32))),
        batch_size=32,
        shortcut={"kind": "patch", "strength": 0.95, "target_class": 1},
    )
    student = FeatureDistillation(str(teacher_ckpt), [{"student": "layer4", "loss": "probe_kl"}], probe_data="student")
    model = ClassifierModule("test_resnet", shortcut.num_classes, shortcut.in_chans, shortcut.task)
    with pytest.raises(InputError, match="carries a shortcut"):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[student]).fit(model, shortcut)
