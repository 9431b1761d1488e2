"""The checkpoint a remote source names, as a local file: a run's ``checkpoints/best.ckpt``, or a logged model's
checkpoint rebuilt from the model's own files (its weightless ``checkpoint.ckpt`` and the weights of its
``model.pt2``, see :mod:`~medrobust.utilities.checkpoint_weights`), each checked against the MD5 its card records.
Used by ``medrobust test --ckpt_path``, teachers and construction sources."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import (
    BEST_ARTIFACT,
    MODEL_ID_TAG,
    artifact_uri,
    download,
    logged_model,
    resolve_run_id,
)

#: the model's pyfunc artifacts: the program (the weights' one copy) and the checkpoint without them
PROGRAM_ARTIFACT, CHECKPOINT_ARTIFACT = "program", "checkpoint"

_RUN_ROOT = re.compile(r"^runs:/([0-9a-f]{32})/?$")


def fetch_checkpoint(
    source: str, tracking_uri: str | None, folder: str | Path, what: str = "Source"
) -> tuple[Path, str]:
    """The checkpoint a remote ``source`` names, as a local file in ``folder``, and the run it belongs to.

    A model: :func:`model_checkpoint`. A run (a run id, ``mlflow:<experiment>/<run name>``, ``runs:/<run_id>`` or
    ``runs:/<run_id>/checkpoints/best.ckpt``): the checkpoint of its logged model (tag ``model.id``: READY, of this
    run, holding its checkpoint), else its ``checkpoints/best.ckpt``. Any other ``runs:/`` path: that artifact."""
    if source.startswith("models:/"):  # resolved once: an alias moved meanwhile changes nothing here
        model = logged_model(source, tracking_uri, what)
        return model_checkpoint(model, tracking_uri, folder, what), model.source_run_id
    if _RUN_ROOT.match(source):
        source = f"runs:/{_RUN_ROOT.match(source).group(1)}/{BEST_ARTIFACT}"
    uri = artifact_uri(source, tracking_uri, BEST_ARTIFACT, what)
    run_id = resolve_run_id(uri, tracking_uri, what)
    why = ""
    if uri == f"runs:/{run_id}/{BEST_ARTIFACT}":
        model, why = _run_model(run_id, tracking_uri, source, what)
        if model is not None:
            return model_checkpoint(model[0], tracking_uri, folder, what, model[1]), run_id
    try:
        return download(uri, tracking_uri, folder, what), run_id
    except InputError as err:
        raise InputError(f"{err}{'; ' + why if why else ''}") from None


def model_checkpoint(
    model: Any, tracking_uri: str | None, folder: str | Path, what: str = "Source", mlmodel: dict | None = None
) -> Path:
    """The full checkpoint of the LoggedModel ``model`` as ``folder/best.ckpt``: its ``checkpoint.ckpt`` with the
    weights of its ``model.pt2`` put back, each file refused unless its MD5 is the one the model's card records. A
    model logged before models held their checkpoint: its run's ``checkpoints/best.ckpt`` (the card's MD5 too).
    The file is the same bytes on every fetch with the same torch version."""
    import torch

    from medrobust.utilities.checkpoint_weights import with_weights

    source, folder = f"models:/{model.model_id}", Path(folder)
    mlmodel = mlmodel if mlmodel is not None else mlmodel_of(model, tracking_uri, what)
    record = ((mlmodel.get("metadata") or {}).get("model_card") or {}).get("checkpoint") or {}
    if record.get("md5") is None:
        raise InputError(f"{what} {source!r}: the model records no checkpoint MD5 (not logged by medrobust?)")
    if not holds_checkpoint(mlmodel):  # logged before the weights were kept once
        path = download(f"runs:/{model.source_run_id}/{BEST_ARTIFACT}", tracking_uri, folder, what)
        _check(path, record["md5"], f"{what} {source!r}: its run's {BEST_ARTIFACT}", "(a resumed fit?)")
        return path
    base, files = model.artifact_location.rstrip("/"), _artifacts(mlmodel)
    if PROGRAM_ARTIFACT not in files or record.get("weights_md5") is None:
        raise InputError(
            f"{what} {source!r}: the model holds a checkpoint but names no program (and MD5) for its weights"
        )
    light = download(f"{base}/{files[CHECKPOINT_ARTIFACT]}", tracking_uri, folder / "model", what)
    _check(light, record["md5"], f"{what} {source!r}: its {files[CHECKPOINT_ARTIFACT]}", "")
    program = download(f"{base}/{files[PROGRAM_ARTIFACT]}", tracking_uri, folder / "model", what)
    _check(program, record["weights_md5"], f"{what} {source!r}: its {files[PROGRAM_ARTIFACT]}", "")
    try:
        full = with_weights(torch.load(light, map_location="cpu", weights_only=True), program)
    except Exception as err:  # an unreadable file, a pickled weight, or weights the program lacks
        message = f"{what} {source!r}: its checkpoint could not be rebuilt from {files[PROGRAM_ARTIFACT]}: {err}"
        raise InputError(message) from None
    path = folder / "best.ckpt"
    torch.save(full, path)
    return path


def mlmodel_of(model: Any, tracking_uri: str | None, what: str = "Source") -> dict[str, Any]:
    """The MLmodel file of the LoggedModel ``model``, as a dict."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = download(f"{model.artifact_location.rstrip('/')}/MLmodel", tracking_uri, tmp, what)
        return yaml.safe_load(path.read_text()) or {}


def holds_checkpoint(mlmodel: dict[str, Any]) -> bool:
    """Whether a model (its MLmodel file) holds its own checkpoint (medrobust models logged since the weights are
    kept once)."""
    return CHECKPOINT_ARTIFACT in _artifacts(mlmodel)


def _run_model(run_id: str, tracking_uri: str | None, source: str, what: str) -> tuple[tuple | None, str]:
    """The run's logged model and its MLmodel file, when the run names one that holds its checkpoint; else None and
    why not (for the error message should the run's ``best.ckpt`` be missing too)."""
    from mlflow import MlflowClient

    try:
        model_id = MlflowClient(tracking_uri).get_run(run_id).data.tags.get(MODEL_ID_TAG)
    except Exception as err:  # MlflowException for an unknown run
        raise InputError(f"{what} {source!r}: run {run_id} not found in {tracking_uri}: {err}") from None
    if not model_id:
        return None, ""
    try:
        model = logged_model(f"models:/{model_id}", tracking_uri, what)
    except InputError as err:  # a deleted model
        return None, f"its tag {MODEL_ID_TAG} names model {model_id}, which cannot be read ({err})"
    if str(model.status) != "READY" or model.source_run_id != run_id:
        return None, f"its tag {MODEL_ID_TAG} names model {model_id} ({model.status}, of run {model.source_run_id})"
    described = mlmodel_of(model, tracking_uri, what)
    return ((model, described), "") if holds_checkpoint(described) else (None, "")


def _artifacts(mlmodel: dict[str, Any]) -> dict[str, str]:
    """The pyfunc artifacts' paths inside the model, as its MLmodel file declares them."""
    declared = ((mlmodel.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
    return {name: entry["path"] for name, entry in declared.items() if isinstance(entry, dict) and "path" in entry}


def _check(path: Path, expected: str, what: str, hint: str) -> None:
    if file_md5(path) != expected:
        raise InputError(
            f"{what} (MD5 {file_md5(path)}) is not the file the model was logged with (its card records MD5 "
            f"{expected}); was it replaced{' ' + hint if hint else ''}?"
        )
