"""The (C, H, W) of the images a Trainer's datamodule serves, where it says."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer


def image_shape(trainer: Trainer, pl_module: LightningModule) -> tuple[int, int, int] | None:
    """``(in_chans, side, side)`` from the datamodule (or the module's hyperparameters); ``None`` when unknown."""
    dm = getattr(trainer, "datamodule", None)
    chans = getattr(dm, "in_chans", None) or pl_module.hparams.get("in_chans")
    side = getattr(dm, "input_size", None) or pl_module.hparams.get("input_size")
    return (int(chans), int(side), int(side)) if chans and side else None
