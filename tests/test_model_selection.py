"""Model selection (issue 9.1): named rules, warm-up epochs never selected, robust validation at the training budget."""

from __future__ import annotations

import pytest
from conftest import quiet_trainer

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.callbacks.robust_validation import RobustValidation
from medrobust.callbacks.selection_checkpoint import SelectionCheckpoint
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.utilities.errors import InputError


def fit(tmp_path, synthetic_npz, rule: str, warmup: int = 2, max_epochs: int = 4, robust_validation: bool = True):
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz(n=(48, 32, 16))), batch_size=16)
    selection = SelectionCheckpoint(rule=rule, dirpath=str(tmp_path / "ckpt"))
    callbacks = [AdversarialTraining("pgd", eps="8/255", steps=2, warmup_epochs=warmup), selection]
    callbacks += [RobustValidation(steps=2)] if robust_validation else []
    trainer = quiet_trainer(
        tmp_path, max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=True, num_sanity_val_steps=0
    )
    trainer.fit(ClassifierModule("test_resnet"), dm)
    return selection, trainer


@pytest.mark.parametrize("rule", ["clean_auroc", "robust_bal_acc", "robust_acc"])
def test_no_rule_selects_an_epoch_inside_the_warmup(tmp_path, synthetic_npz, rule: str) -> None:
    selection, trainer = fit(tmp_path, synthetic_npz, rule)
    assert selection.best_epoch is not None and selection.best_epoch >= 2
    assert selection.selection()["rule"] == rule and selection.selection()["epoch"] == selection.best_epoch
    assert f"epoch={selection.best_epoch}" in selection.best_model_path
    assert trainer.callback_metrics["val/robust/eps"] == pytest.approx(8 / 255)  # the full budget, not the warm-up's


def test_last_rule_selects_the_last_epoch(tmp_path, synthetic_npz) -> None:
    selection, _ = fit(tmp_path, synthetic_npz, "last", warmup=1, max_epochs=3)
    assert selection.best_epoch == 2 and selection.selection()["metric"].startswith("none")


def test_robust_rule_needs_robust_validation(tmp_path, synthetic_npz) -> None:
    with pytest.raises(InputError, match="RobustValidation"):
        fit(tmp_path, synthetic_npz, "robust_bal_acc", robust_validation=False)


def test_a_warmup_as_long_as_the_fit_is_refused(tmp_path, synthetic_npz) -> None:
    with pytest.raises(InputError, match="no epoch is trained at the full budget"):
        fit(tmp_path, synthetic_npz, "clean_auroc", warmup=3, max_epochs=3)


def test_robust_validation_at_eps_zero_is_clean_validation(tmp_path, synthetic_npz) -> None:
    """Standard training (no budget announced): the robust numbers are the clean ones, for an eps sweep's baseline."""
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz(n=(48, 32, 16))), batch_size=16)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[RobustValidation()], num_sanity_val_steps=0)
    trainer.fit(ClassifierModule("test_resnet"), dm)
    metrics = trainer.callback_metrics
    assert float(metrics["val/robust/eps"]) == 0.0
    assert float(metrics["val/robust/acc"]) == pytest.approx(float(metrics["val/acc"]))
    assert float(metrics["val/robust/bal_acc"]) == pytest.approx(float(metrics["val/bal_acc"]))
