"""The one reporting seam of the evaluation callbacks: a JSON report, figures, tags and settings, into whichever
loggers the Trainer has.

Metrics go through ``pl_module.log`` as usual. Everything else goes through :func:`report`, so no evaluation
callback calls the MLflow client itself:

* under an MLflow logger: the JSON and figures become run artifacts, tags run tags, settings params (once: MLflow
  refuses to change a param, so a second test of the same run only warns);
* under any other logger with a ``log_dir`` (CSVLogger, TensorBoardLogger): the JSON and figures are written into that
  folder at the same relative paths, tags into ``tags.json`` there, settings as the logger's hyperparameters;
* without a logger: nothing is written (the callback's ``report`` property still holds the JSON).

Only global rank zero writes; every figure is closed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger
from matplotlib.figure import Figure

from medrobust.callbacks.helpers.mlflow_logger_lookup import log_params_once

log = logging.getLogger(__name__)


def report(
    trainer: Trainer,
    *,
    json_files: dict[str, Any] | None = None,
    figures: dict[str, Figure] | None = None,
    tags: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    config_key: str | None = None,
) -> None:
    """Write ``json_files`` (path -> content), ``figures`` (path -> figure), ``tags`` and ``params`` into every logger
    of ``trainer`` that can hold them. With ``config_key`` (the prefix of the class's config params), a param
    whose value the run's config already logged there (``robustness.pgd_steps``, the same as the config's
    ``pgd_steps`` of the class) is left out: each setting is logged once; what the callback resolved
    (``robustness.grid``, numbers) stays."""
    json_files, figures, tags, params = json_files or {}, figures or {}, tags or {}, params or {}
    try:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    _to_mlflow(logger, json_files, figures, tags, params, config_key)
                elif getattr(logger, "log_dir", None):
                    _to_folder(logger, Path(logger.log_dir), json_files, figures, tags, params)
    finally:
        for figure in figures.values():
            plt.close(figure)


def _to_mlflow(
    logger: MLFlowLogger, json_files: dict, figures: dict, tags: dict, params: dict, config_key: str | None
) -> None:
    client, run_id = logger.experiment, logger.run_id
    for path, content in json_files.items():
        client.log_dict(run_id, content, path)
    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    if params and config_key:
        logged = client.get_run(run_id).data.params  # MLflow stores params as str
        params = {k: v for k, v in params.items() if logged.get(f"{config_key}.{k.split('.', 1)[-1]}") != str(v)}
    if params:
        log_params_once(logger, params)


def _to_folder(logger: Any, folder: Path, json_files: dict, figures: dict, tags: dict, params: dict) -> None:
    for path, content in json_files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content, indent=1, default=str))
    for path, figure in figures.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
    if tags:
        target = folder / "tags.json"
        known = json.loads(target.read_text()) if target.is_file() else {}
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(known | {k: str(v) for k, v in tags.items()}, indent=1, sort_keys=True))
    if params:
        try:
            logger.log_hyperparams(params)
        except Exception as err:  # a logger that cannot take these values: the JSON report holds them anyway
            log.warning("settings not logged as hyperparameters: %s", err)
