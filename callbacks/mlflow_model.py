"""MLflowModel: the selected checkpoint as an MLflow model of its run, and the test metrics linked to that model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger
from medrobust.callbacks.helpers.model_card import model_card
from medrobust.callbacks.mlflow_dataset_inputs import dataset_name
from medrobust.lightning_modules.features.teacher import load_teacher
from medrobust.lightning_modules.nets.image_probabilities import ImageProbabilities

#: the code every logged model runs when it loads (MLflow's "models from code"; not imported here)
MODEL_CODE = Path(__file__).resolve().parent / "helpers" / "pyfunc_image_classifier.py"
#: the model's name inside its run (``runs:/<run_id>/model`` is not used: MLflow 3 addresses it as ``models:/<id>``)
MODEL_NAME = "model"


class MLflowModel(Callback):
    """After fit, the selected checkpoint as an MLflow model (a LoggedModel of the run, ``step`` = the selected
    epoch): ``mlflow.pyfunc.load_model("models:/<model_id>").predict(images)`` takes raw MedMNIST images and returns
    class probabilities, with no medrobust installed.

    * Serialization: the network with its normalisation and stem, and the softmax or sigmoid, as a ``torch.export``
      program (``artifacts/model.pt2``), which loads without running pickle code (the ``weights_only`` stance of
      every checkpoint load here); MLflow's "models from code" wrapper
      (:mod:`~medrobust.callbacks.helpers.pyfunc_image_classifier`, copied into the model) checks the input and
      converts it. ``mlflow.pytorch``'s own pyfunc cannot take both uint8 and float images, nor refuse NaN.
    * Signature: the output (float32 ``(-1, classes)``) only. An input schema would fix one dtype (uint8 or float32)
      and one layout; the wrapper accepts the documented ones and refuses the rest with the expected shape.
    * Input example: the first two test images, as MedMNIST stores them; pinned ``pip_requirements`` (torch, numpy,
      mlflow); ``metadata["model_card"]`` (:func:`~medrobust.callbacks.helpers.model_card.model_card`).
    * The run's tag ``model.id`` names the model; after each test of the same run the newest ``test/*`` and
      ``summary/*`` values are linked to the model and to the test dataset (``model_id``, ``dataset``: the same
      entries, so the run's history gains no point), and ``search_logged_models`` ranks models by, for example,
      ``summary/robust_bal_acc_worst``.

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
        if logger is None or trainer.interrupted:
            return
        if stage == "fit" and self.log_model:
            self._log(trainer, pl_module, logger)
        elif stage == "test" and self.model_id is not None:
            self._link_test_metrics(trainer, logger)

    def _log(self, trainer: Trainer, pl_module: LightningModule, logger: Any) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            run = logger.run_id, logger._tracking_uri
            self.model_id = log_selected_model(trainer, pl_module, Path(best), *run, self._threat)
            logger.experiment.set_tag(logger.run_id, "model.id", self.model_id)

    def _link_test_metrics(self, trainer: Trainer, logger: Any) -> None:
        from mlflow.entities import Metric

        client, run_id = logger.experiment, logger.run_id
        info = trainer.datamodule.describe() if hasattr(trainer.datamodule, "describe") else None
        name, digest = (dataset_name(info, "test"), info["md5"]) if info else (None, None)
        linked = []
        for key in client.get_run(run_id).data.metrics:
            if key.startswith(("test/", "summary/")):  # the newest value, re-logged as it was plus the links
                last = max(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
                if last.model_id is None:
                    link = {"model_id": self.model_id, "dataset_name": name, "dataset_digest": digest}
                    linked.append(Metric(key, last.value, last.timestamp, last.step, **link))
        client.log_batch(run_id, metrics=linked)


def log_selected_model(
    trainer: Trainer, pl_module: LightningModule, checkpoint: Path, run_id: str, tracking_uri: str, threat: Any
) -> str:
    """Log ``checkpoint`` as the run's MLflow model (see :class:`MLflowModel`); returns the model id."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    client = MlflowClient(tracking_uri)
    card = model_card(trainer, pl_module, client.get_run(run_id), threat)
    size, in_chans = card["input"]["size"], card["input"]["in_chans"]
    net = load_teacher(str(checkpoint), what="Selected checkpoint").net
    program = ImageProbabilities(net, pl_module.task).export(in_chans, size)
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, card["num_classes"]))])
    # created here, not by Model.log: with a run id it still files the model under the default experiment
    experiment_id = client.get_run(run_id).info.experiment_id
    selection = {f"selection.{key}": str(value) for key, value in card["selection"].items()}
    model = client.create_logged_model(
        experiment_id, MODEL_NAME, run_id, params=selection | {"data.flag": str(card["dataset"]["flag"])}
    )
    previous = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        torch.export.save(program, path)
        mlflow.set_tracking_uri(tracking_uri)
        try:
            info = Model.log(
                artifact_path=None,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                name=MODEL_NAME,
                python_model=str(MODEL_CODE),
                artifacts={"program": str(path)},
                model_config={"size": size, "in_chans": in_chans},
                signature=ModelSignature(inputs=None, outputs=outputs),
                input_example=input_example(trainer.datamodule),
                pip_requirements=pinned_requirements(),
                metadata={"model_card": card},
                step=int(card["selection"].get("epoch") or 0),
                model_id=model.model_id,
            )
        except BaseException:
            client.finalize_logged_model(model.model_id, "FAILED")
            raise
        finally:
            mlflow.set_tracking_uri(previous)
    client.finalize_logged_model(model.model_id, "READY")
    return info.model_id


def input_example(datamodule: Any) -> np.ndarray | None:
    """The first two test images as MedMNIST stores them: uint8 ``(N, H, W)`` or ``(N, H, W, C)``."""
    test = getattr(datamodule, "datasets", {}).get("test")
    if test is None or not hasattr(test, "images"):
        return None
    images = test.images[:2].numpy()
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def pinned_requirements() -> list[str]:
    """What the model needs to load, at the versions it was logged with (local version labels dropped)."""
    import mlflow

    return [f"{name}=={version.split('+')[0]}" for name, version in
            [("mlflow", mlflow.__version__), ("torch", torch.__version__), ("numpy", np.__version__)]]  # fmt: skip
