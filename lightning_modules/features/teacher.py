"""Load a trained classifier as a frozen teacher: from a checkpoint file, an MLflow artifact or an MLflow run id."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import is_remote
from medrobust.utilities.model_checkpoint import fetch_checkpoint


@dataclass
class Teacher:
    """A frozen network with what it was trained on.

    Attributes:
        net: the network (eval mode, no grad).
        hparams: the model's hyperparameters (``model_name``, ``num_classes``, ``task``, ...).
        data_hparams: the datamodule's hyperparameters, when the checkpoint holds them (its training data).
        source: where it came from, as given.
        run_id: the MLflow run that trained it, when known (an MLflow source, or a checkpoint that records it).
        md5: the MD5 of the checkpoint file it was loaded from: which weights, whatever the source's name.
    """

    net: NormalizedClassifier
    hparams: dict[str, Any]
    data_hparams: dict[str, Any] | None
    source: str
    run_id: str | None = None
    md5: str | None = None


def check_source(source: str, what: str = "Teacher") -> None:
    """Fail early on a checkpoint path that does not exist (MLflow sources are checked when they are fetched)."""
    if not is_remote(source) and not Path(source).expanduser().is_file():
        raise InputError(
            f"{what} checkpoint {source!r} does not exist. Give a checkpoint file, a run id, 'runs:/<run_id>', "
            "'mlflow:<experiment>/<run name>' (the newest FINISHED run of that name; a run's selected checkpoint is "
            "its logged model's, else its checkpoints/best.ckpt), or a model 'models:/<name>@<alias>'."
        )


def load_teacher(source: str, tracking_uri: str | None = None, what: str = "Teacher") -> Teacher:
    """Load ``source`` with ``torch.load(weights_only=True)`` and rebuild its network from its hyperparameters.

    ``what`` names the model in error messages (a teacher, a construction source...)."""
    check_source(source, what)
    run_id = None
    if is_remote(source):
        with tempfile.TemporaryDirectory() as tmp:
            path, run_id = fetch_checkpoint(source, tracking_uri, tmp, what)
            checkpoint, md5 = _load(path, source, what), file_md5(path)
    else:
        path = Path(source).expanduser()
        checkpoint, md5 = _load(path, source, what), file_md5(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "model_name" not in hparams or "state_dict" not in checkpoint:
        raise InputError(f"{what} {source!r} is not a ClassifierModule checkpoint (no model_name hyperparameter)")
    net = NormalizedClassifier.from_hparams(hparams)
    state = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    run_id = run_id or (checkpoint.get("mlflow") or {}).get("run_id")
    data = checkpoint.get("datamodule_hyper_parameters")
    drawn = (checkpoint.get("MedMNISTDataModule") or {}).get("subset_seed")
    if data is not None and data.get("subsample_seed") is None and drawn is not None:
        data = dict(data) | {"subsample_seed": drawn}  # the subset its own run's seed drew
    return Teacher(net, hparams, data, source, run_id, md5)


def _load(path: Path, source: str, what: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for code in the file, RuntimeError for a broken zip
        raise InputError(f"{what} {source!r} is not a loadable checkpoint with weights_only=True: {err}") from None
