"""A callback that fails every process of a run once, at the start of an epoch, as a crash or a bad node would."""

from pathlib import Path

from lightning.pytorch import Callback

ERRORS = {"RuntimeError": RuntimeError, "ValueError": ValueError}


class FailOnce(Callback):
    """Raise ``error`` at the start of epoch ``epoch`` unless ``marker`` (one per rank) exists; create it first, so a
    rerun goes through. Every rank fails at the same point, so no rank is left waiting in a collective."""

    def __init__(self, marker: str, epoch: int = 1, error: str = "RuntimeError") -> None:
        self.marker, self.epoch, self.error = marker, epoch, ERRORS[error]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        marker = Path(f"{self.marker}.rank{trainer.global_rank}")
        if trainer.current_epoch == self.epoch and not marker.exists():
            marker.touch()
            raise self.error(f"FailOnce: injected failure at epoch {self.epoch} on rank {trainer.global_rank}")
