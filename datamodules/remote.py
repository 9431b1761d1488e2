"""``--data.path`` from MLflow: a constructed dataset logged by ``medrobust construct`` (or any ``.npz`` artifact)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from medrobust.datamodules.cache import cache_root
from medrobust.utilities.mlflow_source import artifact_uri, download


def fetch_dataset(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local copy of ``source`` (``runs:/<run_id>/<path>``, a run id, or ``mlflow:<experiment>/<run name>``; a run
    without a path gives the artifact its ``medrobust.artifact`` tag names), fetched once into the cache.

    The store is ``$MLFLOW_TRACKING_URI``, else MLflow's default (``medrobust fit`` sets the variable to its logger's
    tracking URI when one is configured). Artifacts never change, so a cached copy is reused.
    """
    import mlflow

    # the variable first: mlflow.get_tracking_uri() prefers a URI some earlier code in this process set
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    uri = artifact_uri(source, tracking_uri, None, "--data.path")
    run_id, _, relative = uri.removeprefix("runs:/").partition("/")
    folder = cache_root(cache_dir).parent / "mlflow" / run_id
    local = folder / relative
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=local.parent) as tmp:  # DDP ranks may fetch at once: the last rename wins
            os.replace(download(uri, tracking_uri, tmp, "--data.path"), local)
    return local
