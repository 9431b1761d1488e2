"""MLflowModel: the selected checkpoint as an MLflow model of its run, and the test metrics linked to that model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.helpers.checkpoint_upload import log_checkpoint
from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger
from medrobust.callbacks.helpers.model_logging import log_selected_model, prepare_model
from medrobust.callbacks.mlflow_dataset_inputs import dataset_name
from medrobust.utilities.mlflow_source import MODEL_ID_TAG

#: the second part of metric names computed on other data than the clean test split (linked to no dataset)
OTHER_DATA = ("shift", "shortcut", "detect", "saliency", "ood")


class MLflowModel(Callback):
    """After fit, the selected checkpoint as an MLflow model (a LoggedModel of the run, ``step`` = the selected
    checkpoint's global step, so the ``val/*`` values MLflow links to it are the selected epoch's):
    ``mlflow.pyfunc.load_model("models:/<model_id>").predict(images)`` takes raw MedMNIST images and returns class
    probabilities, with no medrobust installed.

    * Serialization: the network with its normalisation and stem, and the softmax or sigmoid, as a ``torch.export``
      program (``artifacts/model.pt2``: a traced graph and its weights, not a pickled Python object), and MLflow's
      "models from code" wrapper (:mod:`~medrobust.callbacks.helpers.pyfunc_image_classifier`, copied into the
      model), which checks the input and converts it. ``mlflow.pytorch``'s own pyfunc cannot take both uint8 and
      float images, nor refuse NaN. Loading a model runs its wrapper's code: load only models you trust
      (medrobust's own ``models:/`` inputs read the program's weights as raw tensor records and the checkpoint with
      ``weights_only=True`` instead: no code in either runs).
    * Signature: the output (float32 ``(-1, classes)``) only. An input schema would fix one dtype (uint8 or float32)
      and one layout; the wrapper accepts the documented ones and refuses the rest with the expected shape.
    * Input example: the first two test images, as MedMNIST stores them; pinned ``pip_requirements`` (torch, numpy,
      mlflow); ``metadata["model_card"]`` (:func:`~medrobust.callbacks.helpers.model_card.model_card`).
    * The run's tag ``model.id`` names the model; after each test of the same run (and of a ``medrobust test
      --ckpt_path models:/...`` run) that test's ``test/*`` and the run's ``summary/*`` values are linked to the
      model (``model_id``; the same entries, so the run's history gains no point), those computed on the clean test
      split and attacks on it also to the test dataset; ``search_logged_models`` then ranks models by, for example,
      ``summary/robust_bal_acc_worst``.
    * The weights once: the model holds the selected checkpoint (``artifacts/checkpoint.ckpt``, without the weights
      ``model.pt2`` holds: hyperparameters, callback states, epoch), so the run uploads no ``checkpoints/best.ckpt``
      beside it; ``models:/`` and ``runs:/`` sources rebuild the full checkpoint from the two files.
    * A model that cannot be exported or logged does not fail the run: a warning, the tag ``model.error``, and the
      selected checkpoint uploaded as ``checkpoints/best.ckpt`` instead.
    * On a tracking server that is away at the end of fit, the model is exported into the run's journal and
      logged when the journal is sent (by the run itself once the server is back, or by ``medrobust sync``); its
      test metrics are then not linked to it.

    The CLI adds it to every run as ``mlflow_model`` (``--mlflow_model.log_model false`` turns it off). Exporting
    and logging take a few seconds (MLflow checks the installed packages against the pinned ones); a ResNet-18's
    ``model.pt2`` is 45 MB.

    Args:
        log_model: log the model (off: the run keeps its checkpoint artifact only).
    """

    def __init__(self, log_model: bool = True) -> None:
        self.log_model = log_model
        self.model_id: str | None = None
        self._threat: Any = None

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._threat = getattr(pl_module, "training_threat", None)  # callbacks withdraw it in their teardown

    @override
    @rank_zero_only
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """After fit and after test, once every callback's ``on_*_end`` hook has logged (the selected checkpoint's
        artifact, ``summary/*``)."""
        logger = mlflow_logger(trainer)
        if logger is None or trainer.interrupted or stage not in ("fit", "test"):
            return
        try:
            if stage == "fit" and self.log_model:
                self._log(trainer, pl_module, logger)
            elif stage == "test" and self.model_id is not None:
                self._link_test_metrics(trainer, logger)
        except Exception as err:  # the model is an addition: the run and its test go on without it
            message = f"{type(err).__name__}: {err}"[:4000]
            rank_zero_warn(
                f"medrobust: the run's MLflow model was not {'logged' if stage == 'fit' else 'linked'}: {message}"
            )
            logger.experiment.set_tag(logger.run_id, "model.error", message)
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            wanted = all(getattr(c, "log_best", True) for c in trainer.callbacks)  # MLflowCheckpoints(log_best=False)
            if stage == "fit" and best and wanted:  # the weights go into the run all the same
                try:
                    log_checkpoint(logger.experiment, logger.run_id, best, resumed=trainer.ckpt_path is not None)
                except Exception as again:
                    rank_zero_warn(f"medrobust: nor was the selected checkpoint uploaded ({again}); it is in {best}")

    def _log(self, trainer: Trainer, pl_module: LightningModule, logger: Any) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not best:
            return
        client = logger.experiment
        flush = getattr(client, "flush", None)  # a journaled client (a tracking server): is the backlog sent?
        if flush is not None and not flush(getattr(logger, "flush_timeout", None)):
            with tempfile.TemporaryDirectory() as tmp:
                folder = prepare_model(trainer, pl_module, Path(best), self._threat, Path(tmp) / "model")
                client.log_prepared_model(logger.run_id, folder)  # copied into the run's journal
            rank_zero_warn(
                "medrobust: the tracking server is away; the run's MLflow model waits with its unsent "
                "records and is logged when they are sent"
            )
            return
        run = logger.run_id, logger._tracking_uri
        self.model_id = log_selected_model(trainer, pl_module, Path(best), *run, self._threat)
        client.set_tag(logger.run_id, MODEL_ID_TAG, self.model_id)

    def _link_test_metrics(self, trainer: Trainer, logger: Any) -> None:
        from mlflow.entities import Metric

        client, run_id = logger.experiment, logger.run_id
        info = trainer.datamodule.describe() if hasattr(trainer.datamodule, "describe") else None
        test = {"dataset_name": dataset_name(info, "test"), "dataset_digest": info["md5"]} if info else {}
        this_test = {k for k in trainer.callback_metrics if k.startswith("test/")}
        keys = this_test | {k for k in client.get_run(run_id).data.metrics if k.startswith("summary/")}
        linked = []
        for key in sorted(keys):  # the newest value, re-logged as it was, plus the links
            last = max(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
            other = key.split("/")[1].startswith(OTHER_DATA)
            link = {"model_id": self.model_id} | ({} if other else test)
            linked.append(Metric(key, last.value, last.timestamp, last.step, **link))
        client.log_batch(run_id, metrics=linked)
