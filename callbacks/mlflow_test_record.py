"""MLflowTestRecord: what a test leaves in the run besides its metrics: the confusion matrix and ``summary/*``."""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.figures import confusion_matrix_figure
from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger
from medrobust.lightning_modules.metrics.confusion import near_constant, top_prediction_share
from medrobust.lightning_modules.metrics.summary import summary_metrics


class MLflowTestRecord(Callback):
    """After each test: ``plots/confusion_matrix_test.png`` and ``confusion_matrix_test.json``; the share of
    predictions given to the most predicted class (``test/top_pred_share``) and the class ratio of the test labels
    (``test/class_ratio``, single-label tasks), with the tag ``test.near_constant``
    (:func:`~medrobust.lightning_modules.metrics.confusion.near_constant`); and the run's ``summary/*`` metrics
    (:mod:`~medrobust.lightning_modules.metrics.summary`), so that reports only ever read runs."""

    @override
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        client, run_id = logger.experiment, logger.run_id
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        matrix = getattr(pl_module, "last_test_confusion", None)
        if matrix is not None:
            names = getattr(trainer.datamodule, "class_names", None) or [str(i) for i in range(matrix.shape[-1])]
            client.log_dict(
                run_id, {"class_names": list(names), "matrix": matrix.tolist()}, "confusion_matrix_test.json"
            )
            fig = confusion_matrix_figure(matrix.numpy(), names, "test confusion matrix")
            client.log_figure(run_id, fig, "plots/confusion_matrix_test.png")
            plt.close(fig)
            share = top_prediction_share(matrix)
            metrics["test/top_pred_share"] = share
            client.set_tag(run_id, "test.near_constant", str(near_constant(matrix)).lower())
            if matrix.ndim == 2 and (matrix.sum(1) > 0).any():
                support = matrix.sum(1)[matrix.sum(1) > 0].double()
                metrics["test/class_ratio"] = float(support.max() / support.min())
        now = int(time.time() * 1000)
        from mlflow.entities import Metric

        extra = {k: v for k, v in metrics.items() if k in ("test/top_pred_share", "test/class_ratio")}
        extra |= summary_metrics(metrics)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in extra.items()])
