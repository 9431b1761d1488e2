"""Load a trained classifier as a frozen teacher: from a checkpoint file, an MLflow artifact or an MLflow run id."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_modules.components.errors import InputError
from lightning_modules.components.normalized_classifier import NormalizedClassifier

#: where a run's selected checkpoint lives among its artifacts (callbacks.MLflowCheckpoints)
BEST_ARTIFACT = "checkpoints/best.ckpt"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Teacher:
    """A frozen network with what it was trained on.

    Attributes:
        net: the network (eval mode, no grad).
        hparams: the model's hyperparameters (``model_name``, ``num_classes``, ``task``, ...).
        data_hparams: the datamodule's hyperparameters, when the checkpoint holds them (its training data).
        source: where it came from, as given.
    """

    net: NormalizedClassifier
    hparams: dict[str, Any]
    data_hparams: dict[str, Any] | None
    source: str


def is_remote(source: str) -> bool:
    """``runs:/<run_id>/<path>``, a bare 32-hex MLflow run id, or ``mlflow:<experiment>/<run name>``."""
    return source.startswith(("runs:/", "mlflow:")) or bool(_RUN_ID.match(source))


def check_source(source: str) -> None:
    """Fail early on a checkpoint path that does not exist (MLflow sources are checked when they are fetched)."""
    if not is_remote(source) and not Path(source).expanduser().is_file():
        raise InputError(
            f"Teacher checkpoint {source!r} does not exist. Give a checkpoint file, an MLflow artifact "
            f"'runs:/<run_id>/{BEST_ARTIFACT}', a run id, or 'mlflow:<experiment>/<run name>' (the newest FINISHED "
            f"run of that name; its {BEST_ARTIFACT} is used)."
        )


def load_teacher(source: str, tracking_uri: str | None = None) -> Teacher:
    """Load ``source`` with ``torch.load(weights_only=True)`` and rebuild its network from its hyperparameters."""
    check_source(source)
    if is_remote(source):
        uri = source if source.startswith("runs:/") else f"runs:/{_run_id(source, tracking_uri)}/{BEST_ARTIFACT}"
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = _load(_download(uri, tracking_uri, tmp), source)
    else:
        checkpoint = _load(Path(source).expanduser(), source)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "model_name" not in hparams or "state_dict" not in checkpoint:
        raise InputError(f"Teacher {source!r} is not a ClassifierModule checkpoint (no model_name hyperparameter)")
    net = NormalizedClassifier.from_timm(
        hparams["model_name"],
        hparams["num_classes"],
        hparams["in_chans"],
        False,
        hparams.get("mean"),
        hparams.get("std"),
        **(hparams.get("timm_kwargs") or {}),
    )
    state = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    return Teacher(net, hparams, checkpoint.get("datamodule_hyper_parameters"), source)


def _run_id(source: str, tracking_uri: str | None) -> str:
    if not source.startswith("mlflow:"):
        return source
    experiment, _, name = source.removeprefix("mlflow:").rpartition("/")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment) if experiment else None
    runs = []
    if found is not None:
        query = f"tags.`mlflow.runName` = '{name}' and attributes.status = 'FINISHED'"
        runs = client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise InputError(
            f"Teacher {source!r}: no FINISHED run named {name!r} in experiment {experiment!r} "
            f"({tracking_uri}); train it first"
        )
    return runs[0].info.run_id


def _download(uri: str, tracking_uri: str | None, folder: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri))
    except Exception as err:  # MlflowException (unknown run, missing artifact) or an OSError
        raise InputError(f"Teacher {uri!r} could not be fetched from MLflow ({tracking_uri}): {err}") from None


def _load(path: Path, source: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for code in the file, RuntimeError for a broken zip
        raise InputError(f"Teacher {source!r} is not a loadable checkpoint with weights_only=True: {err}") from None
