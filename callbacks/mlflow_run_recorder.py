"""MLflowRunRecorder: what a run records beside metrics and params."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from callbacks.figures import confusion_matrix_figure
from callbacks.mlflow_logger_lookup import mlflow_logger

log = logging.getLogger(__name__)


class MLflowRunRecorder(Callback):
    """Record the dataset, system metrics, the test confusion matrix and the run identity into the MLflow run.

    * at setup: the data file as MLflow dataset inputs (flag, size, file MD5, one per split) and run tags;
    * during fit: system metrics (CPU, memory, GPU where present) every ``system_metrics_interval`` seconds;
    * after fit: the best checkpoint as ``checkpoints/best.ckpt`` (weights, hyperparameters and callback states, without
      optimizer state, so ``medrobust test --ckpt_path`` and ``load_from_checkpoint`` take it);
    * after test: ``plots/confusion_matrix_test.png`` and ``confusion_matrix_test.json``;
    * in every checkpoint: the run id and tracking URI, so ``--ckpt_path`` resumes the same run.

    Does nothing without an MLflow logger. Needs a datamodule with a ``describe()`` method for the dataset input.

    Args:
        system_metrics: sample system metrics during fit.
        system_metrics_interval: seconds between samples.
        log_best_checkpoint: log the best checkpoint at the end of fit.
    """

    def __init__(
        self, system_metrics: bool = True, system_metrics_interval: float = 10.0, log_best_checkpoint: bool = True
    ) -> None:
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.log_best_checkpoint = log_best_checkpoint
        self._monitor: Any = None

    @override
    @rank_zero_only
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        describe = getattr(trainer.datamodule, "describe", None)
        if describe is not None:
            self._log_dataset(logger, describe(), stage)
        if stage == "fit" and self.system_metrics and self._monitor is None:
            self._start_monitor(logger)

    def _log_dataset(self, logger: MLFlowLogger, info: dict[str, Any], stage: str) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        source = resolve_dataset_source(info["url"] if info["official"] else info["file"])
        name = f"{info['flag']}_{info['size']}"
        splits = ["train", "val", "test"] if stage == "fit" else ["test" if stage == "test" else "val"]
        inputs = [
            DatasetInput(
                dataset=MetaDataset(source, name=f"{name}/{split}", digest=info["md5"])._to_mlflow_entity(),
                tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=split)],
            )
            for split in splits
        ]
        client, run_id = logger.experiment, logger.run_id
        client.log_inputs(run_id, datasets=inputs)
        tags = {
            "data.flag": info["flag"],
            "data.size": info["size"],
            "data.md5": info["md5"],
            "data.file": info["file"],
            "data.official": info["official"],
        }
        tags |= {f"data.n_{split}": n for split, n in info["n_samples"].items()}
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value))

    def _start_monitor(self, logger: MLFlowLogger) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                logger.run_id,
                sampling_interval=self.system_metrics_interval,
                tracking_uri=logger._tracking_uri,
                resume_logging=getattr(logger, "resumed", False),
            )
            self._monitor.start()
        except Exception as err:  # system metrics are a nicety: a missing psutil or GPU probe must not stop training
            log.warning("System metrics are not recorded: %s", err)
            self._monitor = None

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if logger is None or not self.log_best_checkpoint or not best:
            return
        checkpoint = torch.load(best, map_location="cpu", weights_only=False)
        for key in ("optimizer_states", "lr_schedulers"):
            checkpoint.pop(key, None)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best.ckpt"
            torch.save(checkpoint, path)
            logger.experiment.log_artifact(logger.run_id, str(path), "checkpoints")
        logger.experiment.set_tag(logger.run_id, "best_checkpoint", str(Path(best).resolve()))

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            checkpoint["mlflow"] = {
                "run_id": logger.run_id,
                "experiment_id": logger.experiment_id,
                "tracking_uri": logger._tracking_uri,
            }

    @override
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        matrix = getattr(pl_module, "last_test_confusion", None)
        if logger is None or matrix is None:
            return
        names = getattr(trainer.datamodule, "class_names", None) or [str(i) for i in range(matrix.shape[-1])]
        client, run_id = logger.experiment, logger.run_id
        client.log_dict(run_id, {"class_names": list(names), "matrix": matrix.tolist()}, "confusion_matrix_test.json")
        fig = confusion_matrix_figure(matrix.numpy(), names, "test confusion matrix")
        client.log_figure(run_id, fig, "plots/confusion_matrix_test.png")
        plt.close(fig)
