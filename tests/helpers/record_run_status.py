"""A callback that writes down the MLflow status of its run at the start of every training epoch."""

from pathlib import Path

from lightning.pytorch import Callback


class RecordRunStatus(Callback):
    """Append ``<epoch> <status>`` to ``path`` at each training epoch's start (rank 0)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            status = trainer.logger.experiment.get_run(trainer.logger.run_id).info.status
            with self.path.open("a") as fh:
                fh.write(f"{trainer.current_epoch} {status}\n")
