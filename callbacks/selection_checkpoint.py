"""SelectionCheckpoint: Lightning's ModelCheckpoint with a named model-selection rule; warm-up epochs never chosen."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from typing_extensions import override

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.callbacks.helpers.atomic_checkpoint_io import AtomicCheckpointIO, link_atomic, save_atomic
from medrobust.callbacks.robust_validation import RobustValidation
from medrobust.utilities.errors import InputError

Rule = Literal["clean_auroc", "clean_bal_acc", "robust_acc", "robust_bal_acc", "last"]
#: the validation metric each rule ranks epochs by (``None``: the last epoch is the selected one)
RULES: dict[str, str | None] = {
    "clean_auroc": "val/auroc",
    "clean_bal_acc": "val/bal_acc",
    "robust_acc": "val/robust/acc",
    "robust_bal_acc": "val/robust/bal_acc",
    "last": None,
}


class SelectionCheckpoint(ModelCheckpoint):
    """Keep the checkpoint of the epoch a named rule selects; ``fit`` tests that one (``best``).

    Rules:

    * ``clean_auroc``: the highest validation AUROC (MedMNIST v2's protocol for standard training);
    * ``clean_bal_acc``: the highest validation balanced accuracy;
    * ``robust_acc`` / ``robust_bal_acc``: the highest accuracy / balanced accuracy on validation images under PGD at
      the training budget (:class:`~medrobust.callbacks.RobustValidation` logs them; needed in ``trainer.callbacks``).
      The balanced one does not reward predicting the majority class of an imbalanced split;
    * ``last``: the last epoch.

    Whatever the rule, an epoch still inside an adversarial warm-up (before the module's
    ``training_threat.full_from_epoch``) is never selected: its model was trained at a smaller budget than the run
    reports. The rule, the chosen epoch and its score are saved in checkpoints and recorded in the run as tags
    ``selection.*`` (by :class:`~medrobust.callbacks.MLflowCheckpoints`).

    Args:
        rule: the selection rule.
        dirpath: checkpoint folder; default ``<default_root_dir>/<experiment_id>/<run_id>/checkpoints``.
        filename: checkpoint name pattern (ModelCheckpoint's).
        save_last: also keep ``last.ckpt`` (what ``--ckpt_path last`` resumes).
        save_top_k: how many selected checkpoints to keep.
        every_n_epochs: check every this many epochs.
        verbose: log each save.
    """

    def __init__(
        self,
        rule: Rule = "clean_auroc",
        dirpath: str | None = None,
        filename: str | None = None,
        save_last: bool | None = True,
        save_top_k: int = 1,
        every_n_epochs: int | None = None,
        verbose: bool = False,
    ) -> None:
        if rule not in RULES:
            raise InputError(f"Unknown selection rule {rule!r}; valid: {list(RULES)}")
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=RULES[rule],
            mode="max",
            save_last=save_last,
            save_top_k=save_top_k,
            every_n_epochs=every_n_epochs,
            verbose=verbose,
        )
        self.rule = rule
        self.best_epoch: int | None = None
        #: the global step and path of the last selected checkpoint written
        self._selected_at: tuple[int, str] = (-1, "")
        self._stripped: set[str] = set()

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.check_inputs(trainer, pl_module, stage)

    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A robust rule needs RobustValidation's metric (also called before the ``medrobust`` command's run)."""
        robust = self.rule.startswith("robust")
        if stage == "fit" and robust and not any(isinstance(cb, RobustValidation) for cb in trainer.callbacks):
            raise InputError(
                f"Selection rule {self.rule!r} ranks epochs by {self.monitor}, which callbacks.RobustValidation logs; "
                "add it to trainer.callbacks, or choose rule clean_auroc, clean_bal_acc or last."
            )
        defences = [cb for cb in trainer.callbacks if isinstance(cb, AdversarialTraining) and not cb.standard]
        if stage == "fit" and defences:
            self._check_warmup(trainer, max(cb.warmup_epochs for cb in defences))

    @staticmethod
    def _check_warmup(trainer: Trainer, first: int) -> None:
        if trainer.max_epochs is not None and trainer.max_epochs != -1 and first >= trainer.max_epochs:
            raise InputError(
                f"The adversarial warm-up lasts {first} epochs and the fit {trainer.max_epochs}: no epoch is trained "
                "at the full budget, so none can be selected. Shorten warmup_epochs or raise trainer.max_epochs."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._check_warmup(trainer, self.first_eligible_epoch(pl_module))  # a threat another callback announced

    @staticmethod
    def first_eligible_epoch(pl_module: LightningModule) -> int:
        threat = getattr(pl_module, "training_threat", None)
        return threat.full_from_epoch if threat is not None else 0

    @override
    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if trainer.current_epoch < self.first_eligible_epoch(trainer.lightning_module):
            return
        before = self.best_model_path
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.best_model_path != before:
            self.best_epoch = trainer.current_epoch
            self._selected_at = (trainer.global_step, self.best_model_path)

    @override
    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        """``last.ckpt`` is a link to the selected checkpoint when both are this step's (no second copy); otherwise
        a file of its own, and the selected checkpoint, no longer what a resume reads, loses its optimizer state."""
        step, selected = self._selected_at
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if not self.save_last or self.save_top_k == 0 or step != trainer.global_step or not selected:
            atomic = isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # its rename replaces the link
            if trainer.is_global_zero and os.path.islink(filepath) and not atomic:
                os.remove(filepath)  # a writer that is not atomic would write through the link, into the selected file
            trainer.strategy.barrier()
            super()._save_last_checkpoint(trainer, monitor_candidates)
            self._strip_resume_state(trainer)
            return
        self.last_model_path = filepath
        if trainer.is_global_zero:
            link_atomic(selected, filepath)
        trainer.strategy.barrier()
        self._strip_resume_state(trainer)  # the selected checkpoints of earlier epochs (save_top_k > 1)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: Trainer) -> None:
        """Lightning 2.6 writes ``last.ckpt`` only in a step that also saved a selected checkpoint: an epoch that does
        not improve the score (or is a warm-up epoch) left ``last.ckpt`` at the selected epoch, and a resume went back
        to it, training the later epochs again. ``last.ckpt`` is written every epoch."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """A selected checkpoint that ``last.ckpt`` links to is replaced (top-k rotation): point the link at the new
        selected checkpoint first (this step's), so ``last.ckpt`` never dangles."""
        last, best = self.last_model_path, self.best_model_path
        links_here = bool(last) and os.path.islink(last) and os.path.realpath(last) == os.path.realpath(filepath)
        if trainer.is_global_zero and links_here and best and best != filepath and os.path.isfile(best):
            link_atomic(best, last)
        super()._remove_checkpoint(trainer, filepath)

    def _strip_resume_state(self, trainer: Trainer) -> None:
        """The selected checkpoints keep weights, hyperparameters and callback state; only ``last.ckpt`` keeps the
        optimizer and scheduler state that a resume needs (Adam's moments double a checkpoint's size)."""
        if not trainer.is_global_zero:
            return
        for path in self.best_k_models:
            if not path or not os.path.isfile(path) or os.path.realpath(path) == os.path.realpath(self.last_model_path):
                continue
            if path in self._stripped:
                continue
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            if "optimizer_states" in checkpoint or "lr_schedulers" in checkpoint:
                checkpoint.pop("optimizer_states", None)
                checkpoint.pop("lr_schedulers", None)
                save_atomic(checkpoint, path)
            self._stripped.add(path)

    def selection(self) -> dict[str, Any]:
        """What the rule chose: rule, metric, epoch, score (the ``selection.*`` tags)."""
        score = self.best_model_score
        return {
            "rule": self.rule,
            "metric": self.monitor or "none (last epoch)",
            "epoch": self.best_epoch,
            "score": float(score) if score is not None else None,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"rule": self.rule, "best_epoch": self.best_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
