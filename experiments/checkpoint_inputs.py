"""What ``--ckpt_path`` gives a ``medrobust`` command, checked before the run exists: a model fetched from MLflow, a
model that fits the data, and the config settings a checkpoint replaces."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from medrobust.experiments.resume import checkpoint_hparams
from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri
from medrobust.utilities.console import own_line
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import logged_model
from medrobust.utilities.model_checkpoint import fetch_checkpoint

#: model settings a checkpoint's own replace without the user's noticing: the network it holds
ARCHITECTURE_KEYS = ("model_name", "small_input", "timm_kwargs", "class_weights")


@dataclass
class RemoteCheckpoint:
    """Another run's checkpoint, fetched into a temporary folder that lives as long as this object.

    Attributes:
        path: the local copy.
        tags: what the new run records about it: ``test.checkpoint.source`` (as written), ``.run_id`` and ``.md5``
            (of the artifact fetched).
    """

    path: Path
    tags: dict[str, str]
    folder: Any = field(repr=False, default=None)


def fetch_remote_checkpoint(subcommand: str, source: str, logger_args: Any) -> RemoteCheckpoint:
    """``--ckpt_path mlflow:<experiment>/<run name>`` (or ``runs:/<run_id>/<path>``, a run id, ``models:/...``) for
    ``test`` and ``validate``: that run's selected checkpoint, from the store the new run logs to (its logger's
    ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``)."""
    if subcommand == "fit":
        raise InputError(
            f"fit --ckpt_path {source}: fit continues a run from a checkpoint file or 'last'; to evaluate another "
            "run's model, use `medrobust test --ckpt_path`"
        )
    tracking_uri = resolve_tracking_uri(getattr(logger_args, "tracking_uri", None))
    folder = tempfile.TemporaryDirectory(prefix="medrobust-ckpt-")
    model_id = logged_model(source, tracking_uri, "--ckpt_path").model_id if source.startswith("models:/") else None
    fetched = f"models:/{model_id}" if model_id else source  # an alias resolved once
    path, run_id = fetch_checkpoint(fetched, tracking_uri, folder.name, what="--ckpt_path")
    tags = {"test.checkpoint.source": source, "test.checkpoint.run_id": run_id, "test.checkpoint.md5": file_md5(path)}
    if model_id:  # the test metrics are linked to that model too (MLflowModel)
        tags["test.checkpoint.model_id"] = model_id
    rank_zero_info(f"--ckpt_path {source}: run {run_id}'s {path.name}, fetched into {path}")
    return RemoteCheckpoint(path, tags, folder)


def check_fits_data(path: Path, datamodule: Any) -> None:
    """A checkpoint whose model was trained for another task, class count or channel count than the data is refused
    (it would fail inside the test, after the run exists, with a state_dict shape error)."""
    trained = checkpoint_hparams(path)
    data = {"task": datamodule.task, "num_classes": datamodule.num_classes, "in_chans": datamodule.in_chans}
    differ = {key: (trained[key], value) for key, value in data.items() if trained.get(key, value) != value}
    if differ:
        pairs = ", ".join(f"{key} {model!r} (the data: {value!r})" for key, (model, value) in differ.items())
        raise InputError(f"--ckpt_path {path}: its model was trained with {pairs}; evaluate it on matching data")


def warn_overridden(before: dict[str, Any], after: Any, ckpt_path: str) -> None:
    """LightningCLI takes the model's hyperparameters from ``--ckpt_path``: say which settings it replaced."""
    after = as_dict(after)
    changed = [
        f"{key} {before[key]!r} -> {after.get(key)!r}"
        for key in ARCHITECTURE_KEYS
        if before.get(key) is not None and after.get(key) != before.get(key)
    ]
    if changed:
        own_line(
            f"medrobust: warning: the checkpoint {ckpt_path} holds another model than the config names; its own "
            f"settings are used: {', '.join(changed)}",
            sys.stderr,
        )


def as_dict(section: Any) -> dict[str, Any]:
    """A config section (a jsonargparse Namespace, a dict or None) as a plain dict of its top-level keys."""
    return dict(vars(section)) if section is not None and not isinstance(section, dict) else dict(section or {})
