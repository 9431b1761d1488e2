"""ClassifierModule: tasks, seams, and real Trainer runs on synthetic MedMNIST-format files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch import Callback

from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule, TrainingStep


def make(dm: MedMNISTDataModule, **kwargs) -> ClassifierModule:
    return ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task, **kwargs)


@pytest.mark.parametrize("flag", ["pneumoniamnist", "pathmnist", "chestmnist", "retinamnist"])
def test_fit_and_test_every_task(tmp_path, synthetic_npz, flag: str) -> None:
    dm = MedMNISTDataModule(flag, path=str(synthetic_npz(flag)), batch_size=16)
    model = make(dm)
    quiet_trainer(tmp_path, fast_dev_run=2).fit(model, dm)
    metrics = quiet_trainer(tmp_path).test(model, dm, verbose=False)[0]
    assert set(metrics) == {"test/loss", "test/acc", "test/bal_acc", "test/auroc"}
    cm = model.last_test_confusion
    assert cm.shape == ((14, 2, 2) if flag == "chestmnist" else (dm.num_classes, dm.num_classes))
    assert int(cm.sum()) == 16 * (14 if flag == "chestmnist" else 1)


def test_learns_the_synthetic_signal(tmp_path, synthetic_npz) -> None:
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz("pneumoniamnist", n=(128, 32, 64))), batch_size=32)
    model = make(dm, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    quiet_trainer(tmp_path, max_epochs=4).fit(model, dm)
    assert quiet_trainer(tmp_path).test(model, dm, verbose=False)[0]["test/auroc"] > 0.9


class Seams(Callback):
    """A callback that uses both seams the way adversarial training and distillation will."""

    def __init__(self) -> None:
        self.seen: list[TrainingStep] = []

    def setup(self, trainer, pl_module, stage) -> None:
        pl_module.add_input_transform("noise", lambda x, y: ((x + 0.01 * torch.randn_like(x)).clamp(0, 1), y))
        pl_module.add_loss_term("l2", self.l2)
        self.module = pl_module

    def l2(self, step: TrainingStep) -> torch.Tensor:
        self.seen.append(step)
        return 1e-4 * sum(p.square().sum() for p in self.module.net.parameters())

    def teardown(self, trainer, pl_module, stage) -> None:
        pl_module.remove_input_transform("noise")
        pl_module.remove_loss_term("l2")


def test_seams_transform_input_and_add_named_terms(tmp_path, synthetic_npz) -> None:
    from lightning.pytorch.loggers import CSVLogger

    dm = MedMNISTDataModule("pathmnist", path=str(synthetic_npz("pathmnist")), batch_size=16)
    model, seams, logger = make(dm), Seams(), CSVLogger(tmp_path)
    quiet_trainer(
        tmp_path, max_steps=3, limit_val_batches=0, callbacks=[seams], logger=logger, log_every_n_steps=1
    ).fit(model, dm)
    assert len(seams.seen) == 3
    step = seams.seen[0]
    assert not torch.equal(step.x, step.x_clean) and torch.equal(step.y, step.y_clean)
    assert step.logits.requires_grad
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss/l2_step", "train/loss/task_step", "train/loss_step"} <= set(header)
    assert model.input_transforms == () and model.loss_terms == ()  # removed in teardown


def test_loss_terms_are_added_to_the_task_loss(synthetic_npz) -> None:
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz()), batch_size=8)
    dm.setup("fit")
    model = make(dm)
    model.log = model.log_dict = lambda *a, **k: None  # outside a Trainer there is nowhere to log
    batch = next(iter(dm.train_dataloader()))
    base = model.training_step(batch, 0)
    model.add_loss_term("const", lambda step: torch.tensor(2.5))
    assert model.training_step(batch, 0).item() == pytest.approx(base.item() + 2.5, rel=1e-5)


def test_seam_names_are_unique_and_valid(synthetic_npz) -> None:
    model = ClassifierModule("test_resnet")
    model.add_loss_term("trades", lambda s: s.logits.sum())
    with pytest.raises(ValueError, match="already registered"):
        model.add_loss_term("trades", lambda s: s.logits.sum())
    with pytest.raises(ValueError, match="task loss itself"):
        model.add_loss_term("task", lambda s: s.logits.sum())
    with pytest.raises(ValueError, match="MLflow would strip"):
        model.add_loss_term("kl(x,x')", lambda s: s.logits.sum())
    model.add_input_transform("pgd", lambda x, y: (x, y))
    with pytest.raises(ValueError, match="already registered"):
        model.add_input_transform("pgd", lambda x, y: (x, y))


def test_multilabel_uses_bce(synthetic_npz) -> None:
    model = ClassifierModule("test_resnet", num_classes=14, task="multilabel")
    logits, y = torch.randn(4, 14), (torch.rand(4, 14) > 0.5).float()
    assert torch.allclose(model.task_loss(logits, y), torch.nn.functional.binary_cross_entropy_with_logits(logits, y))


def test_checkpoint_round_trip(tmp_path, synthetic_npz) -> None:
    dm = MedMNISTDataModule("pathmnist", path=str(synthetic_npz("pathmnist")), batch_size=16)
    model = make(dm)
    t = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(model, dm)
    t.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ClassifierModule.load_from_checkpoint(tmp_path / "m.ckpt").eval()
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_pretrained_models_normalise_as_their_weights_were_trained() -> None:
    """Issue 9.20: the Normalize layer takes the pretrained weights' mean/std (grey images: their channel mean),
    read from timm's pretrained config without the network; explicit values and non-pretrained models keep theirs."""
    from medrobust.lightning_modules.nets.normalized_classifier import pretrained_normalization

    mean, std = pretrained_normalization("resnet18", in_chans=3)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    grey_mean, grey_std = pretrained_normalization("resnet18", in_chans=1)
    assert grey_mean == pytest.approx((sum(mean) / 3,)) and grey_std == pytest.approx((sum(std) / 3,))
    assert ClassifierModule("test_resnet").hparams["mean"] == [0.5]


def test_a_checkpoint_of_a_pretrained_model_loads_without_the_network(tmp_path) -> None:
    """Issue 9.20: load_from_checkpoint does not fetch pretrained weights the checkpoint already holds (offline, as
    here, fetching them raised), and the model normalises as it was trained to."""
    import lightning.pytorch as pl

    model = ClassifierModule("resnet18", in_chans=1, mean=[0.449], std=[0.226])
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["pretrained"] = True  # as a run with pretrained: true saves it
    torch.save(checkpoint, tmp_path / "m.ckpt")
    loaded = ClassifierModule.load_from_checkpoint(tmp_path / "m.ckpt").eval()
    assert loaded.net.normalize.values() == ([pytest.approx(0.449)], [pytest.approx(0.226)])
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("flag", ["pneumoniamnist", "chestmnist"])
def test_balanced_class_weights_from_the_training_labels(tmp_path, synthetic_npz, flag) -> None:
    """Issue 9.24: class_weights='balanced' is scikit-learn's n / (C * n_c) (BCE pos_weight neg/pos per label)."""
    from sklearn.utils.class_weight import compute_class_weight

    dm = MedMNISTDataModule(flag, path=str(synthetic_npz(flag)), batch_size=16)
    model = make(dm, class_weights="balanced")
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, dm)
    counts, n = dm.label_counts("train")
    if flag == "chestmnist":
        assert torch.allclose(model.class_weight, ((n - counts) / counts.clamp_min(1)).float())
    else:
        labels = dm.datasets["train"].labels.numpy()
        reference = compute_class_weight("balanced", classes=np.unique(labels), y=labels)
        assert model.class_weight.numpy() == pytest.approx(reference, rel=1e-6)


def test_a_near_constant_classifier_is_flagged_after_every_test(tmp_path, synthetic_npz, capfd) -> None:
    """Issue 24.6: the module itself warns, on a line of its own after the test, whatever callbacks the run has."""
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz()), batch_size=16)
    model = make(dm)
    head = model.net.backbone.get_classifier()
    with torch.no_grad():
        head.bias.copy_(torch.tensor([50.0, -50.0]))  # every image to class 0
    quiet_trainer(tmp_path).test(model, dm, verbose=False)
    assert model.last_test_top_share == 1.0
    lines = capfd.readouterr().err.splitlines()
    assert any(line.startswith("medrobust: warning: near-constant predictions: one class gets 100%") for line in lines)


def test_near_constant_means_more_concentrated_than_the_labels() -> None:
    """Issue 24.6: the rule behind the warning, the tag and the reports' flags (rows: labels, columns: predictions)."""
    from medrobust.lightning_modules.metrics.confusion import near_constant

    assert near_constant(torch.tensor([[100, 0], [60, 0]]))  # always class 0
    assert not near_constant(torch.tensor([[94, 2], [2, 2]]))  # a 96% majority predicted 96% of the time
    assert near_constant(torch.tensor([[96, 0], [3, 1]]))  # 99% of predictions for a 96% class
    assert not near_constant(torch.tensor([[60, 40], [30, 70]]))
    assert near_constant(torch.tensor([[2, 95], [0, 3]]))  # 97% of predictions for the 3% class: collapsed
    assert not near_constant(torch.zeros(14, 2, 2).index_fill_(1, torch.tensor([0]), 50))  # multi-label: never


def test_soft_labels_give_the_hard_label_loss_for_one_hot_targets() -> None:
    """Issue 24.4: with class weights too (PyTorch normalises weighted soft targets by N, hard ones by the weights)."""
    from medrobust.lightning_modules.losses import task_loss

    logits, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 2, 1, 0, 0, 0])
    weight = torch.tensor([0.5, 2.0, 3.0])
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    for w in (None, weight):
        assert task_loss(logits, one_hot, weight=w) == pytest.approx(float(task_loss(logits, y, weight=w)), rel=1e-6)
