"""Logging a selected checkpoint as an MLflow model: the torch.export program, the models-from-code wrapper, the
card, the input example and the pinned requirements (:class:`~medrobust.callbacks.MLflowModel`)."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from medrobust.callbacks.helpers.model_card import model_card
from medrobust.lightning_modules.features.teacher import load_teacher
from medrobust.lightning_modules.nets.image_probabilities import ImageProbabilities
from medrobust.utilities.checkpoint_weights import without_weights
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.model_checkpoint import CHECKPOINT_ARTIFACT, PROGRAM_ARTIFACT

#: the code every logged model runs when it loads (MLflow's "models from code"; not imported here)
MODEL_CODE = Path(__file__).resolve().parent / "pyfunc_image_classifier.py"
#: the model's name inside its run (MLflow 3 addresses it as ``models:/<model_id>``)
MODEL_NAME = "model"
#: the logged model's param that names the prepared folder it was made from
UPLOAD_PARAM = "medrobust.upload_id"
PROGRAM, CHECKPOINT, EXAMPLE, MANIFEST = "model.pt2", "checkpoint.ckpt", "input_example.npy", "manifest.json"


def log_selected_model(
    trainer: Trainer, pl_module: LightningModule, checkpoint: Path, run_id: str, tracking_uri: str, threat: Any
) -> str:
    """Log ``checkpoint`` as the run's MLflow model (see :class:`~medrobust.callbacks.MLflowModel`); returns the
    model id. A model that fails half-way is marked FAILED, and the error raised."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare_model(trainer, pl_module, checkpoint, threat, Path(tmp) / "model")
        return publish_model(folder, run_id, tracking_uri)


def prepare_model(trainer: Trainer, pl_module: LightningModule, checkpoint: Path, threat: Any, folder: Path) -> Path:
    """Everything the model needs from this process, in ``folder``: the exported program (``model.pt2``, the
    weights' one copy), the selected checkpoint without those weights (``checkpoint.ckpt``: hyperparameters and
    callback states, for ``medrobust test``, teachers and construction sources), the input example
    (``input_example.npy``) and ``manifest.json`` (the card without what the run holds, the input size, the
    checkpoint's global step, an upload id). :func:`publish_model` logs it, now or later (a model prepared while the
    tracking server is away waits in the run's journal)."""
    folder.mkdir(parents=True, exist_ok=True)
    card = model_card(trainer, pl_module, threat)
    size, in_chans = card["input"]["size"], card["input"]["in_chans"]
    net = load_teacher(str(checkpoint), what="Selected checkpoint").net
    program = ImageProbabilities(net, pl_module.task).export(in_chans, size)
    selected = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save(without_weights(selected, program), folder / CHECKPOINT)
    torch.export.save(program, folder / PROGRAM)
    example = input_example(trainer.datamodule)
    if example is not None:
        np.save(folder / EXAMPLE, example)
    step = int(selected.get("global_step", 0))
    card["checkpoint"] = {
        "artifact": f"artifacts/{CHECKPOINT}",  # where MLflow puts it; readers take the MLmodel file's path
        "md5": file_md5(folder / CHECKPOINT),
        "weights": f"artifacts/{PROGRAM}",
        "weights_md5": file_md5(folder / PROGRAM),
    }
    manifest = {"card": card, "step": step, "upload_id": uuid.uuid4().hex}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def publish_model(folder: Path, run_id: str, tracking_uri: str) -> str:
    """Log a :func:`prepare_model` folder as ``run_id``'s model; returns its id. Publishing the same folder again
    returns the model the first time made (found by its upload id), so a replayed journal makes no second model."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model, ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # Model.log reads the global URI
    from mlflow.types import Schema, TensorSpec

    manifest = json.loads((folder / MANIFEST).read_text())
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    for earlier in client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if earlier.params.get(UPLOAD_PARAM) != manifest["upload_id"]:
            continue
        if str(earlier.status) == "READY":
            return earlier.model_id
        client.delete_logged_model(earlier.model_id)  # an earlier try that the server's going away cut short
    card = manifest["card"] | {"source_run_id": run_id}
    artifacts = {PROGRAM_ARTIFACT: str(folder / PROGRAM)}
    if (folder / CHECKPOINT).is_file():  # the weights once (a journal prepared before then: the run's best.ckpt)
        artifacts[CHECKPOINT_ARTIFACT] = str(folder / CHECKPOINT)
    else:
        card["checkpoint"] = (card["checkpoint"] or {}) | {"md5": run.data.tags.get("best_checkpoint.md5")}
    size, in_chans = card["input"]["size"], card["input"]["in_chans"]
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, card["num_classes"]))])
    # created here, not by Model.log: with a run id it still files the model under the default experiment
    selection = {f"selection.{key}": str(value) for key, value in card["selection"].items()}
    params = selection | {"data.flag": str(card["dataset"]["flag"]), UPLOAD_PARAM: manifest["upload_id"]}
    model = client.create_logged_model(run.info.experiment_id, MODEL_NAME, run_id, params=params)
    example = folder / EXAMPLE
    try:
        with _use_tracking_uri(tracking_uri):
            Model.log(
                artifact_path=None,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                name=MODEL_NAME,
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                model_config={"size": size, "in_chans": in_chans},
                signature=ModelSignature(inputs=None, outputs=outputs),
                input_example=np.load(example) if example.is_file() else None,
                pip_requirements=pinned_requirements(),
                metadata={"model_card": card},
                step=manifest["step"],
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
