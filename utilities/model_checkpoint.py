"""A logged model's checkpoint, rebuilt from the model's own files: its weightless ``checkpoint.ckpt`` and the
weights of its ``model.pt2`` (see :mod:`~medrobust.utilities.checkpoint_weights`), each checked against the MD5 its
card records. Used through :func:`~medrobust.utilities.mlflow_source.fetch_checkpoint`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import BEST_ARTIFACT, download

#: the model's pyfunc artifacts: the program (the weights' one copy) and the checkpoint without them
PROGRAM_ARTIFACT, CHECKPOINT_ARTIFACT = "program", "checkpoint"


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
    light = download(f"{base}/{files[CHECKPOINT_ARTIFACT]}", tracking_uri, folder / "model", what)
    _check(light, record["md5"], f"{what} {source!r}: its {files[CHECKPOINT_ARTIFACT]}", "")
    program = download(f"{base}/{files[PROGRAM_ARTIFACT]}", tracking_uri, folder / "model", what)
    _check(program, record.get("weights_md5"), f"{what} {source!r}: its {files[PROGRAM_ARTIFACT]}", "")
    try:
        full = with_weights(torch.load(light, map_location="cpu", weights_only=True), program)
    except Exception as err:  # an unreadable file, a pickled weight, or weights the program lacks
        message = f"{what} {source!r}: its checkpoint could not be rebuilt from {files[PROGRAM_ARTIFACT]}: {err}"
        raise InputError(message) from None
    path = folder / "best.ckpt"
    torch.save(full, path)
    return path


def _artifacts(mlmodel: dict[str, Any]) -> dict[str, str]:
    """The pyfunc artifacts' paths inside the model, as its MLmodel file declares them."""
    declared = ((mlmodel.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
    return {name: entry["path"] for name, entry in declared.items() if isinstance(entry, dict) and "path" in entry}


def _check(path: Path, expected: str | None, what: str, hint: str) -> None:
    if expected is not None and file_md5(path) != expected:
        raise InputError(
            f"{what} (MD5 {file_md5(path)}) is not the file the model was logged with (its card records MD5 "
            f"{expected}); was it replaced{' ' + hint if hint else ''}?"
        )
