"""A callback that sends its own process a signal in the middle of an epoch, as a scheduler would."""

import os
import signal

from lightning.pytorch import Callback


class SignalAfterEpochs(Callback):
    """After the first training batch of epoch ``epochs``, send this process ``signal_name`` (SIGUSR1 is SLURM's
    requeue warning), then SIGKILL it once the handler has run, as SLURM ends a job it requeues."""

    def __init__(self, epochs: int = 1, signal_name: str = "SIGUSR1") -> None:
        self.epochs, self.signal = epochs, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epochs and batch_idx == 0:
            os.kill(os.getpid(), self.signal)  # Python runs the handler before the next line
            os.kill(os.getpid(), signal.SIGKILL)
