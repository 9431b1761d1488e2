"""A callback that kills its own process outright, as a crash, OOM kill or pre-empted job would."""

import os
import signal

from lightning.pytorch import Callback


class KillAfterEpochs(Callback):
    """SIGKILL this process at the start of epoch ``epochs`` (after the previous epoch's checkpoint is written)."""

    def __init__(self, epochs: int = 1) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epochs:
            os.kill(os.getpid(), signal.SIGKILL)
