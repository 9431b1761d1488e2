"""Find the MLflow logger among a Trainer's loggers, and log params into it that may already be there."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger

log = logging.getLogger(__name__)


def mlflow_logger(trainer: Trainer) -> MLFlowLogger | None:
    """The Trainer's first MLflow logger, or ``None`` (callbacks then record nothing)."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def log_params_once(logger: MLFlowLogger, params: dict[str, Any]) -> None:
    """Log ``params``; MLflow refuses to change a param, so a second test of the same run with other settings only
    warns (its report artifact still holds the settings it ran with)."""
    try:
        getattr(logger, "log_params", logger.log_hyperparams)(params)
    except Exception as err:  # MlflowException for a changed value; the report holds the settings anyway
        log.warning("settings not logged as params: %s", err)
