"""Issue 25.10: a model trained from another model's output starts from its own initial weights, and each seed of a
study draws its own data subset, with real Trainers on synthetic MedMNIST-format files."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch import Callback, seed_everything
from mlflow import MlflowClient

from medrobust.callbacks.feature_distillation import FeatureDistillation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.features.teacher import load_teacher
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5


class Grab(Callback):
    """The network's weights when training starts (after every ``setup``)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.state = copy.deepcopy(pl_module.net.state_dict())


def seeded_model(dm: MedMNISTDataModule, seed: int = 0) -> ClassifierModule:
    seed_everything(seed)  # as `medrobust fit` does before it builds the model
    return ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_distilled_student_does_not_start_from_its_teachers_initial_weights(
    tmp_path, synthetic_npz, monkeypatch
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test, whatever seed_everything sets
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz("pneumoniamnist", n=(64, 32, 32))), batch_size=32)
    teacher = seeded_model(dm)
    teacher_init = copy.deepcopy(teacher.net.state_dict())
    trainer = quiet_trainer(tmp_path / "teacher", max_epochs=1)
    trainer.fit(teacher, dm)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")

    plain, grab = seeded_model(dm), Grab()
    quiet_trainer(tmp_path / "plain", max_steps=1, callbacks=[grab]).fit(plain, dm)
    assert same(grab.state, teacher_init)  # the same seed and architecture: the same start, unless told apart

    starts = []
    for k in range(2):
        student, grab = seeded_model(dm), Grab()
        assert same(student.net.state_dict(), teacher_init)  # what the student began with before setup
        distill = FeatureDistillation(str(tmp_path / "teacher.ckpt"), logit_weight=1.0)
        logger = MLflowRunLogger("students", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        quiet_trainer(tmp_path / f"student{k}", max_steps=1, callbacks=[distill, grab], logger=logger).fit(student, dm)
        starts.append(grab.state)
        params = MlflowClient(logger.tracking_uri).get_run(logger.run_id).data.params
        assert params["init.independent_of"] == f"teacher:{file_md5(tmp_path / 'teacher.ckpt')}"
    weights = [k for k, v in teacher_init.items() if k.startswith("backbone.") and v.dim() > 1]  # drawn at random
    assert not any(torch.equal(starts[0][k], teacher_init[k]) for k in weights)
    assert same(starts[0], starts[1])  # still reproducible: the same seed and teacher give the same start


def test_each_seed_draws_its_own_subset_unless_subsample_seed_is_set(tmp_path, synthetic_npz, monkeypatch) -> None:
    """The training subset follows the run's seed; validation and test subsets stay the same for every run (seed 0),
    so a test of any seed sees the same images; subsample_seed fixes every split's."""
    path = str(synthetic_npz("pneumoniamnist", n=(64, 32, 32)))

    def subsets(seed: int, **kwargs) -> MedMNISTDataModule:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
        dm = MedMNISTDataModule("pneumoniamnist", path=path, subsample=16, **kwargs)
        dm.setup("fit")
        assert dm.describe()["subsample_seed"] == kwargs.get("subsample_seed", seed)
        return dm

    zero, one = subsets(0), subsets(1)
    assert not torch.equal(zero.datasets["train"].images, one.datasets["train"].images)
    assert torch.equal(zero.datasets["val"].images, one.datasets["val"].images)
    assert torch.equal(zero.datasets["train"].images, subsets(0).datasets["train"].images)
    fixed = [subsets(s, subsample_seed=5).datasets["train"].images for s in (0, 1)]
    assert torch.equal(*fixed)
    # a teacher trained on a subset records the seed that drew it, so its data is rebuilt as drawn
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dm = MedMNISTDataModule("pneumoniamnist", path=path, subsample={"train": 16}, batch_size=16)
    trainer = quiet_trainer(tmp_path / "teacher", max_steps=1)
    trainer.fit(seeded_model(dm, seed=3), dm)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    assert load_teacher(str(tmp_path / "teacher.ckpt")).data_hparams["subsample_seed"] == 3
    # resuming it under another seed would train on another subset: refused
    other = MedMNISTDataModule("pneumoniamnist", path=path, subsample={"train": 16}, batch_size=16)
    with pytest.raises(InputError, match="drawn with seed 3"):
        quiet_trainer(tmp_path / "resume", max_steps=2).fit(
            seeded_model(other, seed=0), other, ckpt_path=tmp_path / "teacher.ckpt"
        )


def test_a_loaded_or_resumed_student_keeps_its_weights(tmp_path, synthetic_npz, monkeypatch) -> None:
    """The redraw touches only weights still at their initial values: a student whose weights were loaded before
    fit keeps them."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz("pneumoniamnist", n=(64, 32, 32))), batch_size=32)
    teacher = seeded_model(dm)
    trainer = quiet_trainer(tmp_path / "teacher", max_epochs=1)
    trainer.fit(teacher, dm)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    student, grab = seeded_model(dm), Grab()
    student.net.load_state_dict(teacher.net.state_dict())  # a warm start, chosen on purpose
    distill = FeatureDistillation(str(tmp_path / "teacher.ckpt"), logit_weight=1.0)
    quiet_trainer(tmp_path / "student", max_steps=1, callbacks=[distill, grab]).fit(student, dm)
    assert same(grab.state, teacher.net.state_dict())
