"""MLflowCheckpoints: the run's identity in every checkpoint, and the selected checkpoint and epoch in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.checkpoint_upload import log_checkpoint
from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger
from medrobust.callbacks.mlflow_model import MLflowModel
from medrobust.callbacks.selection_checkpoint import SelectionCheckpoint
from medrobust.utilities.tracking_uri import redact_uri


class MLflowCheckpoints(Callback):
    """Tie checkpoints and runs together.

    * In every checkpoint: ``checkpoint["mlflow"]`` holds the run id, experiment id and the tracking URI with its
      credentials removed, so ``--ckpt_path`` resumes the same run and no password is written to disk.
    * After fit: the selected checkpoint's local path as tag ``best_checkpoint``; the checkpoint itself goes into the
      run once. Where :class:`~medrobust.callbacks.MLflowModel` logs the run's model, the model holds it (its
      ``model.pt2`` the weights, its ``checkpoint.ckpt`` the rest); otherwise, or if the model cannot be logged, it
      is the artifact ``checkpoints/best.ckpt`` (weights, hyperparameters and callback states, without optimizer
      state), with the file's MD5 as tag ``best_checkpoint.md5``. ``medrobust test --ckpt_path runs:/<id>``,
      teachers and construction sources take either. And the selection as tags ``selection.rule``,
      ``selection.metric``, ``selection.epoch`` and ``selection.score`` (see
      :class:`~medrobust.callbacks.SelectionCheckpoint`).

    Args:
        log_best: upload the selected checkpoint into the run when no logged model holds it.
    """

    def __init__(self, log_best: bool = True) -> None:
        self.log_best = log_best

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            checkpoint["mlflow"] = {
                "run_id": logger.run_id,
                "experiment_id": logger.experiment_id,
                "tracking_uri": redact_uri(logger._tracking_uri),
            }

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        callback = trainer.checkpoint_callback
        if logger is None or callback is None:
            return
        client, run_id = logger.experiment, logger.run_id
        if isinstance(callback, SelectionCheckpoint):
            for key, value in callback.selection().items():
                client.set_tag(run_id, f"selection.{key}", str(value))
        best = getattr(callback, "best_model_path", "")
        if not best:
            return
        client.set_tag(run_id, "best_checkpoint", str(Path(best).resolve()))
        in_model = any(isinstance(c, MLflowModel) and c.log_model for c in trainer.callbacks)
        if self.log_best and not in_model:  # a logged model holds it, or uploads it if it cannot be logged
            log_checkpoint(client, run_id, best, resumed=trainer.ckpt_path is not None)
