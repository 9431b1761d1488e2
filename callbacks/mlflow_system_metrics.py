"""MLflowSystemMetrics: CPU, memory, disk and GPU use sampled into the run while it trains."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger

log = logging.getLogger(__name__)


class MLflowSystemMetrics(Callback):
    """MLflow's system-metrics monitor (``system/*``) during fit, stopped at teardown or on an exception.

    Args:
        enabled: sample system metrics.
        interval: seconds between samples.
    """

    def __init__(self, enabled: bool = True, interval: float = 10.0) -> None:
        self.enabled = enabled
        self.interval = interval
        self._monitor: Any = None

    @override
    @rank_zero_only
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = mlflow_logger(trainer)
        if stage != "fit" or not self.enabled or logger is None or self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                logger.run_id,
                sampling_interval=self.interval,
                tracking_uri=logger._tracking_uri,
                resume_logging=getattr(logger, "resumed", False),
            )
            self._monitor.start()
        except Exception as err:  # system metrics are a nicety: a missing psutil or GPU probe must not stop training
            log.warning("System metrics are not recorded: %s", err)
            self._monitor = None

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")
