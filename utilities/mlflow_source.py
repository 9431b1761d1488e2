"""Where a trained model or a dataset lives in MLflow: ``runs:/<run_id>/<path>``, a run id,
``mlflow:<experiment>/<run name>`` (the newest FINISHED run of that name), or a model: ``models:/<model_id>``,
``models:/<name>@<alias>``, ``models:/<name>/<version>`` (its checkpoint, rebuilt from the model's own files). Used
by ``--data.path`` and, through :func:`~medrobust.utilities.model_checkpoint.fetch_checkpoint`, by ``medrobust test
--ckpt_path``, teachers and construction sources."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medrobust.utilities.errors import InputError

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")

#: the artifact a run's selected checkpoint is logged as when the run logs no model
#: (:class:`~medrobust.callbacks.MLflowCheckpoints`)
BEST_ARTIFACT = "checkpoints/best.ckpt"
#: the run tag that names the run's logged model (:class:`~medrobust.callbacks.MLflowModel`)
MODEL_ID_TAG = "model.id"


def is_remote(source: str) -> bool:
    """``runs:/<run_id>/<path>``, a bare 32-hex MLflow run id, ``mlflow:<experiment>/<run name>`` or ``models:/...``."""
    return source.startswith(("runs:/", "mlflow:", "models:/")) or bool(_RUN_ID.match(source))


def resolve_run_id(source: str, tracking_uri: str | None, what: str = "Source") -> str:
    """The run a remote ``source`` names (``runs:/`` URIs and bare ids as they are; ``mlflow:`` looked up; a model's
    source run)."""
    if source.startswith("runs:/"):
        return source.removeprefix("runs:/").split("/", 1)[0]
    if source.startswith("models:/"):
        return logged_model(source, tracking_uri, what).source_run_id
    if not source.startswith("mlflow:"):
        return source
    experiment, _, name = source.removeprefix("mlflow:").rpartition("/")
    from mlflow import MlflowClient

    run = newest_finished(MlflowClient(tracking_uri), experiment, name)
    if run is None:
        raise InputError(
            f"{what} {source!r}: no FINISHED run named {name!r} in experiment {experiment!r} "
            f"({tracking_uri}); make it first"
        )
    return run.info.run_id


def newest_finished(client: Any, experiment: str, name: str) -> Any | None:
    """The newest FINISHED run named ``name`` in ``experiment`` (an MlflowClient's Run), or None."""
    found = client.get_experiment_by_name(experiment) if experiment else None
    if found is None:
        return None
    query = f"tags.`mlflow.runName` = '{name}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def artifact_uri(source: str, tracking_uri: str | None, default_path: str | None, what: str = "Source") -> str:
    """``runs:/<run_id>/<path>`` for a remote source; a run given without a path uses ``default_path``, or the run's
    tag ``medrobust.artifact`` when ``default_path`` is None."""
    if source.startswith("runs:/"):
        return source
    run_id = resolve_run_id(source, tracking_uri, what)
    if default_path is None:
        from mlflow import MlflowClient

        try:
            default_path = MlflowClient(tracking_uri).get_run(run_id).data.tags.get("medrobust.artifact")
        except Exception as err:  # MlflowException for an unknown run
            raise InputError(f"{what} {source!r}: run {run_id} not found in {tracking_uri}: {err}") from None
        if not default_path:
            raise InputError(f"{what} {source!r}: run {run_id} has no medrobust.artifact tag; give runs:/<id>/<path>")
    return f"runs:/{run_id}/{default_path}"


def download(uri: str, tracking_uri: str | None, folder: str | Path, what: str = "Source") -> Path:
    """Fetch one artifact into ``folder``; an unknown run or artifact is an :class:`InputError`."""
    import mlflow

    try:
        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder), tracking_uri=tracking_uri)
        )
    except Exception as err:  # MlflowException (unknown run, missing artifact) or an OSError
        raise InputError(f"{what} {uri!r} could not be fetched from MLflow ({tracking_uri}): {err}") from None


def logged_model(source: str, tracking_uri: str | None, what: str = "Source") -> Any:
    """The LoggedModel ``models:/<model_id>``, ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names."""
    from mlflow import MlflowClient

    client, rest = MlflowClient(tracking_uri), source.removeprefix("models:/").rstrip("/")
    try:
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            return client.get_logged_model(rest)
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = rest.rsplit("/", 1) if "/" in rest else (rest, "")
            if not number.isdigit():
                raise InputError(
                    f"{what} {source!r}: give models:/<model_id>, models:/<name>@<alias> or models:/<name>/<version>"
                )
            version = client.get_model_version(name, number)
        # a version registered from models:/<model_id> keeps it in its source (its model_id field may be empty)
        model_id = version.model_id or (version.source or "").removeprefix("models:/").split("/", 1)[0]
        if not model_id.startswith("m-"):
            raise InputError(
                f"{what} {source!r}: version {version.version} of {name!r} was registered from {version.source!r}, "
                "not from a logged model (models:/<model_id>)"
            )
        return client.get_logged_model(model_id)
    except InputError:
        raise
    except Exception as err:  # MlflowException: unknown model, name, alias or version
        raise InputError(f"{what} {source!r} not found in {tracking_uri}: {err}") from None
