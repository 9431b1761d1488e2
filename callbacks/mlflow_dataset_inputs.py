"""MLflowDatasetInputs: the data a run was trained and tested on, as MLflow dataset inputs and tags."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger


class MLflowDatasetInputs(Callback):
    """At setup, the data file as MLflow dataset inputs (flag, size, file MD5, one per split used) and ``data.*``
    tags, the training split's label counts (``data.label_counts.train``) and, at fit start, the class weights the
    loss uses (``train.class_weights``). Needs a datamodule with ``describe()``; does nothing without MLflow."""

    @override
    @rank_zero_only
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = mlflow_logger(trainer)
        describe = getattr(trainer.datamodule, "describe", None)
        if logger is not None and describe is not None:
            self._log_dataset(logger, describe(), stage)

    @override
    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        weight = getattr(pl_module, "class_weight", None)
        if logger is not None and weight is not None:
            values = [round(float(w), 6) for w in weight]
            logger.experiment.set_tag(logger.run_id, "train.class_weights", str(values))

    @staticmethod
    def _log_dataset(logger: MLFlowLogger, info: dict[str, Any], stage: str) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        source = resolve_dataset_source(info["url"] if info["official"] else info["file"])
        splits = ["train", "val", "test"] if stage == "fit" else ["test" if stage == "test" else "val"]
        inputs = [
            DatasetInput(
                dataset=MetaDataset(source, name=dataset_name(info, split), digest=info["md5"])._to_mlflow_entity(),
                tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=split)],
            )
            for split in splits
        ]
        client, run_id = logger.experiment, logger.run_id
        client.log_inputs(run_id, datasets=inputs)
        tags = {
            "data.flag": info["flag"],
            "data.size": info["size"],
            "data.md5": info["md5"],
            "data.file": info["file"],
            "data.official": info["official"],
        }
        if info.get("source_uri"):  # a file logged to MLflow (medrobust construct): the run it came from
            tags["data.source_uri"] = info["source_uri"]
        tags |= {f"data.n_{split}": n for split, n in info["n_samples"].items()}
        tags |= {f"data.label_counts.{split}": counts for split, counts in info.get("label_counts", {}).items()}
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value))


def dataset_name(info: dict[str, Any], split: str) -> str:
    """The MLflow dataset name of one split of the data ``describe()`` gives: ``<flag>_<size>/<split>``."""
    return f"{info['flag']}_{info['size']}/{split}"
