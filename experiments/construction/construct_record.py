"""The MLflow run of a ``medrobust construct``: the file as an artifact and a dataset input, and its lineage."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medrobust.datamodules.files import MedMNISTSpec
from medrobust.lightning_modules.features.teacher import Teacher

#: where the constructed file lives among the run's artifacts; the run's ``medrobust.artifact`` tag names it, so a
#: run id or ``mlflow:<experiment>/<run name>`` is enough for ``--data.path``
ARTIFACT_DIR = "dataset"


def record(
    tracking_uri: str,
    ns: argparse.Namespace,
    settings: Any,
    teacher: Teacher,
    spec: MedMNISTSpec,
    out: Path,
    md5: str,
    stats: dict[str, float],
) -> str:
    """Log the construction as a FINISHED run of ``ns.experiment_name``; returns its id.

    Params ``construct.*`` (kind, attack settings, seed, source), tags ``lineage.*`` (source run and model, kind),
    ``construct.valid`` (``false`` for a det/rand set the source reads as relabelled on fewer than ``min_success``
    of its changed images; the rate is metric ``construct/source_agrees_changed``) and ``medrobust.artifact``,
    metrics ``construct/*`` (:func:`medrobust.experiments.construction.construct.diagnostics`), the file under
    ``dataset/``, and two dataset inputs with their digests: the source data (context ``source``) and the
    constructed file (context ``constructed``), whose digest a training run on it shows as well.
    """
    from mlflow import MlflowClient
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(ns.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(ns.experiment_name)
    source_name, source_params = _source_run(client, teacher)
    run = client.create_run(experiment_id, run_name=ns.run_name or f"{settings.kind}_from_{source_name}")
    run_id = run.info.run_id
    try:
        params = {f"construct.{k}": v for k, v in asdict(settings).items()}
        params |= {"construct.source_model": teacher.hparams.get("model_name"), "data.flag": spec.flag}
        params |= {"data.size": spec.size, "construct.md5": md5}
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        tags = {
            "lineage.kind": settings.kind,
            "lineage.source": settings.source,
            "lineage.source_run_id": settings.source_run_id or "",
            # the source's training budget, from its run (a checkpoint file from elsewhere: unknown)
            "lineage.source_at_eps": source_params.get(
                "callbacks.AdversarialTraining.eps", "none" if source_params else "unknown"
            ),
            "medrobust.artifact": f"{ARTIFACT_DIR}/{out.name}",
            "data.md5": md5,
            # a det/rand set whose relabelled images the source does not read as labelled is not Ilyas et al.'s
            "construct.valid": "true" if stats.get("valid", 1.0) else "false",
        }
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        for key, value in stats.items():
            client.log_metric(run_id, f"construct/{key}", float(value))
        client.log_artifact(run_id, str(out), ARTIFACT_DIR)
        name = f"{spec.flag}_{spec.size}"
        inputs = [
            (MetaDataset(resolve_dataset_source(spec.url), name=f"{name}/train", digest=settings.data_md5), "source"),
            (
                MetaDataset(resolve_dataset_source(str(out.resolve())), name=f"{name}/{settings.kind}", digest=md5),
                "constructed",
            ),
        ]
        client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(dataset._to_mlflow_entity(), [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])
                for dataset, context in inputs
            ],
        )
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _source_run(client: Any, teacher: Teacher) -> tuple[str, dict[str, str]]:
    """The source's run name and params, when its run is in this store; else the checkpoint's file name."""
    if teacher.run_id:
        try:
            run = client.get_run(teacher.run_id)
            return run.info.run_name, dict(run.data.params)
        except Exception:  # a checkpoint from another tracking store
            pass
    return Path(teacher.source).stem, {}
