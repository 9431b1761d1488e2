"""Save the resolved CLI config into the MLflow run, where Lightning's SaveConfigCallback cannot."""

from __future__ import annotations

import json
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import mlflow_logger
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger, flatten_params
from medrobust.utilities.tracking_uri import redact_uri

#: settings that say how to run, not what is run: a resume may change them without a new config version
RUN_CONTROL = ("ckpt_path", "trainer.logger.init_args.run_id")
VERSION_TAG = "config.version"


class MLflowSaveConfig(SaveConfigCallback):
    """Log the full resolved config as the artifact ``config.yaml`` and every setting as a param.

    * Params are namespaced as in the YAML (``trainer.max_epochs``, ``model.optimizer.init_args.lr``); each entry of
      ``trainer.callbacks`` is flattened under its class name (``callbacks.AdversarialTraining.eps``; a second
      instance of a class gets ``_2``), so the MLflow UI can filter and compare runs by any callback setting.
    * Credentials in URIs (a tracking URI's database password) are replaced by ``***`` before anything is written.
    * On a resumed run the first config stays ``config.yaml`` and matches the params. A resume whose settings
      differ is recorded as a new version: ``config_v<k>.yaml``, tag ``config.version = k`` and tag
      ``config.v<k>.changes`` with each changed setting's old and new value (MLflow params cannot change).

    Lightning's callback writes into ``trainer.log_dir``, which an MLflow logger on a database or HTTP store does not
    have. Use with ``save_config_kwargs={"save_to_log_dir": False}``; runs without an MLflow logger fall back to a file
    in ``trainer.default_root_dir``.
    """

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = _redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        logger = mlflow_logger(trainer)
        if logger is None:
            self.parser.save(self.config, f"{trainer.default_root_dir}/{self.config_filename}", overwrite=True)
            return
        text = yaml.safe_dump(config, sort_keys=False)
        config.pop("config", None)
        params = config_params(config)
        # Linked values (num_classes, in_chans, task) are not in the config; take them from what was built.
        for prefix, hparams in (("model", pl_module.hparams), ("data", getattr(trainer.datamodule, "hparams", {}))):
            for key, value in hparams.items():
                params.setdefault(f"{prefix}.{key}", value)
        client, run_id = logger.experiment, logger.run_id
        run = client.get_run(run_id)
        if VERSION_TAG in run.data.tags:  # a resumed run that already holds its first config
            self._record_version(client, run, text, params)
        else:  # a new run, or one a sweep driver created for this process
            client.log_text(run_id, text, self.config_filename)
            client.set_tag(run_id, VERSION_TAG, "1")
        if isinstance(logger, MLflowRunLogger):
            logger.log_params(params)
            logger.params_from_config = True

    def _record_version(self, client: Any, run: Any, text: str, params: dict[str, Any]) -> None:
        logged = run.data.params
        changes = {
            key: [logged[key], str(value)[:250]]
            for key, value in params.items()
            if key in logged and key not in RUN_CONTROL and logged[key] != str(value)[:250]
        }
        run_id = run.info.run_id
        if not changes:
            return
        version = int(run.data.tags.get(VERSION_TAG, "1")) + 1
        client.log_text(run_id, text, f"config_v{version}.yaml")
        client.set_tag(run_id, VERSION_TAG, str(version))
        client.set_tag(run_id, f"config.v{version}.changes", json.dumps(changes)[:5000])
        rank_zero_warn(
            f"Resumed run {run_id} with changed settings {sorted(changes)}: recorded as config version {version} "
            f"(config_v{version}.yaml, tag config.v{version}.changes); the params keep the first version's values."
        )


def config_params(config: dict[str, Any]) -> dict[str, Any]:
    """A config as flat params: dotted keys, and ``trainer.callbacks`` as ``callbacks.<Class>[_k].<arg>``."""
    config = dict(config)
    trainer = dict(config.get("trainer") or {})
    callbacks = trainer.pop("callbacks", None) or []
    config["trainer"] = trainer
    params = flatten_params({k: v for k, v in config.items() if k != "trainer" or v})
    seen: dict[str, int] = {}
    for entry in callbacks if isinstance(callbacks, list) else [callbacks]:
        if not isinstance(entry, dict) or "class_path" not in entry:
            continue
        name = str(entry["class_path"]).rsplit(".", 1)[-1]
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}_{seen[name]}"
        params[f"callbacks.{key}"] = entry["class_path"]
        if entry.get("init_args"):
            params |= flatten_params(entry["init_args"], f"callbacks.{key}.")
    return params


def _redact(value: Any) -> Any:
    """Every URI-looking string with its credentials replaced (see :func:`redact_uri`)."""
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_uri(value)
    return value
