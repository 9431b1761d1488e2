"""Where a fit is, counted in training batches: what schedules and seeds step by, whatever the optimizer does."""

from __future__ import annotations

from lightning.pytorch import Trainer


def batch_index(trainer: Trainer) -> int:
    """The index of the current training batch, counted from the start of the fit across epochs (0 for the first).

    ``trainer.global_step`` counts optimizer steps, which gradient accumulation makes fewer than batches; this counts
    batches, and a resumed fit continues from where it stopped.
    """
    return trainer.fit_loop.epoch_loop.total_batch_idx
