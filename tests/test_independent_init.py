"""Issue 25.10: a model trained from another model's output starts from its own initial weights, and each seed of a
study draws its own data subset, with real Trainers on synthetic MedMNIST-format files."""

from __future__ import annotations

import copy

import torch
from conftest import quiet_trainer
from lightning.pytorch import Callback, seed_everything
from mlflow import MlflowClient

from medrobust.callbacks.feature_distillation import FeatureDistillation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.features.teacher import load_teacher
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
    path = str(synthetic_npz("pneumoniamnist", n=(64, 32, 32)))

    def subset(seed: int, **kwargs) -> torch.Tensor:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
        dm = MedMNISTDataModule("pneumoniamnist", path=path, subsample={"train": 16}, **kwargs)
        dm.setup("fit")
        assert dm.describe()["subsample_seed"] == kwargs.get("subsample_seed", seed)
        return dm.datasets["train"].images

    assert not torch.equal(subset(0), subset(1))
    assert torch.equal(subset(0), subset(0))
    assert torch.equal(subset(0, subsample_seed=5), subset(1, subsample_seed=5))
    # a teacher trained on a subset records the seed that drew it, so its data is rebuilt as drawn
    dm = MedMNISTDataModule("pneumoniamnist", path=path, subsample={"train": 16}, batch_size=16)
    trainer = quiet_trainer(tmp_path / "teacher", max_steps=1)
    trainer.fit(seeded_model(dm, seed=3), dm)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    assert load_teacher(str(tmp_path / "teacher.ckpt")).data_hparams["subsample_seed"] == 3
