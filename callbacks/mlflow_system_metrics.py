"""MLflowSystemMetrics: CPU, memory, disk and GPU use sampled into the run while it trains."""

from __future__ import annotations

import logging
import threading
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger

log = logging.getLogger(__name__)


class MLflowSystemMetrics(Callback):
    """MLflow's system metrics (``system/*``: CPU, memory, disk, network, GPU) sampled every ``interval`` seconds
    during fit, stopped at teardown or on an exception.

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

            monitor = SystemMetricsMonitor(
                logger.run_id,
                sampling_interval=self.interval,
                tracking_uri=logger._tracking_uri,
                resume_logging=getattr(logger, "resumed", False),
            )
        except Exception as err:  # system metrics are a nicety: a missing psutil or GPU probe must not stop training
            log.warning("System metrics are not recorded: %s", err)
            return
        # MLflow's probes, sampled by this callback's thread and written by the run's own client: on a tracking
        # server that is away, into the run's journal (MLflow's own loop would wait minutes for it, then stop)
        monitor.mlflow_logger.client = logger.experiment
        self._monitor, self._stop = monitor, threading.Event()
        self._thread = threading.Thread(target=self._sample, name="medrobust-system-metrics", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        monitor = self._monitor
        while not self._stop.wait(self.interval):
            try:
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
            except Exception as err:
                log.warning("System metrics stopped: %s", err)
                return

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._monitor is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            try:
                self._monitor.mlflow_logger.flush()
            except Exception as err:
                log.warning("The last system metrics were not recorded: %s", err)
            self._monitor = None

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")
