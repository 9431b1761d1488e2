"""The selected checkpoint as the run's artifact ``checkpoints/best.ckpt``, for runs whose weights no logged model
holds (:class:`~medrobust.callbacks.MLflowCheckpoints`, and :class:`~medrobust.callbacks.MLflowModel` when the model
could not be logged)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from medrobust.utilities.checkpoint_weights import TRAINING_STATE
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import BEST_ARTIFACT, MODEL_ID_TAG


def log_checkpoint(client: Any, run_id: str, best: Path | str, resumed: bool = False) -> None:
    """Upload ``best`` without optimizer and scheduler state as ``checkpoints/best.ckpt``, and its MD5 as the tag
    ``best_checkpoint.md5``. In a ``resumed`` fit, the tag ``model.id`` of a model an earlier fit of the run logged
    goes: that model is no longer the run's selected checkpoint (a run id as a source then takes this one)."""
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    for key in TRAINING_STATE:
        checkpoint.pop(key, None)
    folder, name = BEST_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        torch.save(checkpoint, path)
        client.log_artifact(run_id, str(path), folder)
        client.set_tag(run_id, "best_checkpoint.md5", file_md5(path))
    if resumed:  # journaled on a tracking server (its replay takes a missing tag as done); direct otherwise
        try:
            client.delete_tag(run_id, MODEL_ID_TAG)
        except Exception as err:  # MlflowException: the run had no model
            if "No tag with name" not in str(err):
                raise
