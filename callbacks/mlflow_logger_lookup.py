"""Find the MLflow logger among a Trainer's loggers."""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger


def mlflow_logger(trainer: Trainer) -> MLFlowLogger | None:
    """The Trainer's first MLflow logger, or ``None`` (callbacks then record nothing)."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)
