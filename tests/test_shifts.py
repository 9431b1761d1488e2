"""Shifted test splits, their cache, ShiftEvaluation and CorruptionAugmentation in real Trainer runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_MEDMNIST, quiet_trainer
from lightning.pytorch import Callback
from mlflow import MlflowClient

from medrobust.callbacks.corruption_augmentation import CorruptionAugmentation
from medrobust.callbacks.shift_evaluation import ShiftEvaluation
from medrobust.datamodules.corruptions import corrupt, corruptions_for
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.lightning_modules.classifier import ClassifierModule


def test_shift_splits_follow_the_id_split(tmp_path, synthetic_npz) -> None:
    dm = MedMNISTDataModule(
        "pneumoniamnist",
        path=str(synthetic_npz()),
        cache_dir=str(tmp_path),
        shifts=["corruption:gaussian_noise", "corruption:jpeg_compression@2"],
    )
    assert dm.test_split_names == [
        "id",
        *(f"shift/gaussian_noise/s{k}" for k in range(1, 6)),
        "shift/jpeg_compression/s2",
    ]
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 7
    test = dm.datasets["test"]
    noisy = dm.shifted["shift/gaussian_noise/s3"]
    assert torch.equal(noisy.images, corrupt(test.images, "pneumoniamnist", "gaussian_noise", 3))
    assert torch.equal(noisy.labels, test.labels)


def test_cache_is_reused_and_identical(tmp_path, synthetic_npz, monkeypatch) -> None:
    path = str(synthetic_npz())
    first = MedMNISTDataModule("pneumoniamnist", path=path, cache_dir=str(tmp_path), shifts=["corruptions"])
    first.setup("test")
    files = sorted((tmp_path / "shifts").rglob("*.npz"))
    assert len(files) == len(corruptions_for("pneumoniamnist"))

    def fail(*args, **kwargs):
        raise AssertionError("a cached rebuild must not recompute")

    monkeypatch.setattr("medrobust.datamodules.shifts.corrupt", fail)
    second = MedMNISTDataModule("pneumoniamnist", path=path, cache_dir=str(tmp_path), shifts=["corruptions"])
    second.setup("test")
    for name, dataset in first.shifted.items():
        assert torch.equal(dataset.images, second.shifted[name].images)


def test_subsample_gets_its_own_cache_entry(tmp_path, synthetic_npz) -> None:
    path = str(synthetic_npz())
    for subsample in (None, {"test": 8}):
        dm = MedMNISTDataModule(
            "pneumoniamnist", path=path, cache_dir=str(tmp_path), subsample=subsample, shifts=["corruption:pixelate"]
        )
        dm.setup("test")
        assert len(dm.shifted["shift/pixelate/s1"]) == len(dm.datasets["test"])
    assert len(list((tmp_path / "shifts").iterdir())) == 2


def test_resolution_and_ood_splits(tmp_path, real_root) -> None:
    dm = MedMNISTDataModule("breastmnist", root=str(real_root), cache_dir=str(tmp_path), shifts=["ood:pneumoniamnist"])
    dm.setup("test")
    ood = dm.shifted["ood/pneumoniamnist"]
    assert len(ood) == 624 and ood.images.shape[1:] == (1, 28, 28) and (ood.labels == -1).all()
    with pytest.raises(Exception, match="breastmnist_64.npz not found"):
        MedMNISTDataModule("breastmnist", root=str(real_root), shifts=["resolution:64"]).setup("test")


@pytest.mark.parametrize(
    ("shift", "match"),
    [
        ("corruption:fog", r"'fog' is unknown. Valid corruptions for pneumoniamnist: \["),
        ("corruption:gaussian_noise@6", "outside 1..5"),
        ("corruption:saturate", "does not apply to pneumoniamnist's modality"),
        ("resolution:32", r"one of \[64, 128, 224\]"),
        ("ood:pneumoniamnist", "must differ"),
        ("ood:nope", "Unknown 2D MedMNIST flag"),
        ("blur", "Unknown shift 'blur'. Valid: 'corruptions'"),
    ],
)
def test_bad_shift_specs(synthetic_npz, shift, match) -> None:
    with pytest.raises(ValueError, match=match):
        MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz()), shifts=[shift])


def test_shift_evaluation_report(tmp_path, synthetic_npz) -> None:
    dm = MedMNISTDataModule(
        "pneumoniamnist",
        path=str(synthetic_npz(n=(128, 16, 64))),
        batch_size=32,
        cache_dir=str(tmp_path),
        shifts=["corruptions"],
    )
    model = ClassifierModule("test_resnet", optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    quiet_trainer(tmp_path, max_epochs=3, limit_val_batches=0).fit(model, dm)
    callback = ShiftEvaluation()
    logger = MLflowRunLogger(
        "shift", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts")
    )
    metrics = quiet_trainer(tmp_path, logger=logger, callbacks=[callback]).test(model, dm, verbose=False)
    flat = {k: v for m in metrics for k, v in m.items()}
    assert {
        "test/acc",
        "test/shift/gaussian_noise/s3/bal_acc",
        "test/shift/gaussian_noise/s3/auroc",
        "test/shift/gaussian_noise/mean/bal_acc",
        "test/shift/gaussian_noise/be",
        "test/shift/rbe",
        "test/shift/mean/bal_acc",
    } <= set(flat)
    report = callback.report
    assert report["clean"]["acc"] == pytest.approx(flat["test/acc"])
    noise = report["corruptions"]["gaussian_noise"]
    assert noise["be"] == pytest.approx((1 - noise["mean_bal_acc"]) / 0.4414529914529915)
    client = MlflowClient(logger.tracking_uri)
    logged = json.loads(Path(client.download_artifacts(logger.run_id, "shift.json")).read_text())
    assert set(logged["corruptions"]) == set(corruptions_for("pneumoniamnist"))
    assert [a.path for a in client.list_artifacts(logger.run_id, "plots")] == [
        "plots/shift_examples.png",
        "plots/shift_heatmap.png",
    ]


def test_corruption_augmentation(tmp_path, synthetic_npz) -> None:
    seen = []

    class Probe(Callback):
        def setup(self, trainer, pl_module, stage) -> None:
            pl_module.add_loss_term("probe", lambda step: seen.append(step) or step.logits.new_zeros(()))

    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz()), batch_size=16)
    model = ClassifierModule("test_resnet")
    augment = CorruptionAugmentation(p=0.5, corruptions=["gaussian_noise", "contrast_down"], severities=[5])
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[augment, Probe()]).fit(model, dm)
    changed = torch.cat([(s.x - s.x_clean).flatten(1).abs().amax(1) > 0 for s in seen])
    assert 0 < changed.float().mean() < 1 and model.input_transforms == ()
    with pytest.raises(ValueError, match="Valid corruptions for pneumoniamnist"):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[CorruptionAugmentation(corruptions=["fog"])]).fit(
            ClassifierModule("test_resnet"), dm
        )


def test_corruption_augmentation_draws_anew_for_each_batch_under_accumulation(tmp_path, synthetic_npz) -> None:
    """Issue 9.14: draws are seeded by the batch index, not the optimizer step: the two batches of one accumulation
    window get different corruption choices (seeding by global_step gave them identical ones)."""
    masks = []

    class Probe(Callback):
        def setup(self, trainer, pl_module, stage) -> None:
            pl_module.add_loss_term("probe", lambda step: masks.append(self.changed(step)) or step.logits.new_zeros(()))

        @staticmethod
        def changed(step) -> torch.Tensor:
            return (step.x - step.x_clean).flatten(1).abs().amax(1) > 0

    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz(n=(64, 16, 16))), batch_size=16, num_workers=0)
    augment = CorruptionAugmentation(p=0.5, corruptions=["contrast_down"], severities=[5])
    trainer = quiet_trainer(
        tmp_path, max_steps=2, limit_val_batches=0, accumulate_grad_batches=2, callbacks=[augment, Probe()]
    )
    trainer.fit(ClassifierModule("test_resnet"), dm)
    assert len(masks) == 4
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[2], masks[3])


@pytest.mark.skipif(not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file(), reason="needs the real PneumoniaMNIST")
def test_full_suite_on_real_pneumonia(tmp_path) -> None:
    dm = MedMNISTDataModule(
        "pneumoniamnist", root=str(SHARED_MEDMNIST), cache_dir=str(tmp_path), shifts=["corruptions", "ood:breastmnist"]
    )
    dm.setup("test")
    assert len(dm.test_dataloader()) == 1 + 13 * 5 + 1
