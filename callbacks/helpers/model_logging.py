"""Logging a selected checkpoint as an MLflow model: the torch.export program, the models-from-code wrapper, the
card, the input example and the pinned requirements (:class:`~medrobust.callbacks.MLflowModel`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from medrobust.callbacks.helpers.model_card import model_card
from medrobust.lightning_modules.features.teacher import load_teacher
from medrobust.lightning_modules.nets.image_probabilities import ImageProbabilities

#: the code every logged model runs when it loads (MLflow's "models from code"; not imported here)
MODEL_CODE = Path(__file__).resolve().parent / "pyfunc_image_classifier.py"
#: the model's name inside its run (MLflow 3 addresses it as ``models:/<model_id>``)
MODEL_NAME = "model"
#: the run tag that names the run's logged model
MODEL_ID_TAG = "model.id"


def log_selected_model(
    trainer: Trainer, pl_module: LightningModule, checkpoint: Path, run_id: str, tracking_uri: str, threat: Any
) -> str:
    """Log ``checkpoint`` as the run's MLflow model (see :class:`~medrobust.callbacks.MLflowModel`); returns the
    model id. A model that fails half-way is marked FAILED, and the error raised."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model, ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # Model.log reads the global URI
    from mlflow.types import Schema, TensorSpec

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    card = model_card(trainer, pl_module, run, threat)
    size, in_chans = card["input"]["size"], card["input"]["in_chans"]
    step = int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, card["num_classes"]))])
    # created here, not by Model.log: with a run id it still files the model under the default experiment
    selection = {f"selection.{key}": str(value) for key, value in card["selection"].items()}
    params = selection | {"data.flag": str(card["dataset"]["flag"])}
    model = client.create_logged_model(run.info.experiment_id, MODEL_NAME, run_id, params=params)
    try:
        net = load_teacher(str(checkpoint), what="Selected checkpoint").net
        program = ImageProbabilities(net, pl_module.task).export(in_chans, size)
        with tempfile.TemporaryDirectory() as tmp, _use_tracking_uri(tracking_uri):
            path = Path(tmp) / "model.pt2"
            torch.export.save(program, path)
            Model.log(
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
                step=step,
                model_id=model.model_id,
            )
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


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
