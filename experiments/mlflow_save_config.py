"""Save the resolved CLI config into the MLflow run, where Lightning's SaveConfigCallback cannot."""

from __future__ import annotations

from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from callbacks.mlflow_logger_lookup import mlflow_logger
from experiments.mlflow_logger import MLflowRunLogger


class MLflowSaveConfig(SaveConfigCallback):
    """Log the full resolved config as the artifact ``config.yaml`` of the run.

    Lightning's callback writes into ``trainer.log_dir``, which an MLflow logger on a database or HTTP store does not
    have. Use with ``save_config_kwargs={"save_to_log_dir": False}``; runs without an MLflow logger fall back to a file
    in ``trainer.default_root_dir``.
    """

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        logger = mlflow_logger(trainer)
        if logger is not None:
            logger.experiment.log_text(logger.run_id, text, self.config_filename)
        if isinstance(logger, MLflowRunLogger):
            # Every setting as a param, namespaced as in the YAML (trainer.max_epochs, model.optimizer.init_args.lr),
            # in place of the module's and datamodule's flat hyperparameters.
            config = yaml.safe_load(text)
            config.pop("config", None)
            params = _flatten(config)
            # Linked values (num_classes, in_chans, task) are not in the config; take them from what was built.
            datamodule = trainer.datamodule
            for prefix, hparams in (("model", pl_module.hparams), ("data", getattr(datamodule, "hparams", {}))):
                for key, value in hparams.items():
                    params.setdefault(f"{prefix}.{key}", value)
            logger.log_params(params)
            logger.params_from_config = True
        else:
            self.parser.save(self.config, f"{trainer.default_root_dir}/{self.config_filename}", overwrite=True)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat
