"""MLflowRunLogger: Lightning's MLFlowLogger with medrobust's defaults and resume semantics."""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store ``sqlite:///mlflow.db``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("file:") or "://" not in uri:
        raise ValueError(
            f"MLflow tracking URI {uri!r} is a file store, which this MLflow no longer writes. Use a database "
            f"(e.g. {DEFAULT_TRACKING_URI}) or a server (http://127.0.0.1:5000)."
        )
    return uri


class MLflowRunLogger(MLFlowLogger):
    """One MLflow run per training run, on the embedded SQLite store unless told otherwise.

    Differences from Lightning's ``MLFlowLogger``: the tracking URI is resolved when the logger is built (argument,
    then ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``); checkpoints are logged by default; a run can be
    resumed (:meth:`resume_run`), in which case parameters already logged are not logged again; and
    :meth:`keep_open_after_fit` keeps the run RUNNING between ``fit`` and the ``test`` that follows it.

    Args:
        experiment_name: MLflow experiment, created if missing.
        run_name: MLflow run name; MLflow picks one if ``None``.
        tracking_uri: see above.
        tags: extra run tags.
        log_model: Lightning's checkpoint logging (``True``: best and last with optimizer state; ``"all"``: every
            checkpoint). Off by default: :class:`~callbacks.MLflowRunRecorder` logs the best weights instead.
        artifact_location: artifact root for a newly created experiment.
        run_id: continue this run instead of creating one.
    """

    def __init__(
        self,
        experiment_name: str = "medrobust",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = False,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=resolve_tracking_uri(tracking_uri),
            tags=tags,
            log_model=log_model,
            artifact_location=artifact_location,
            run_id=run_id,
        )
        self.resumed = run_id is not None
        self._keep_open = False
        #: set by :class:`~experiments.mlflow_save_config.MLflowSaveConfig`, which logs the whole config as params
        self.params_from_config = False

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    def resume_run(self, run_id: str) -> None:
        """Continue an existing run (call before the run is first used)."""
        if self._initialized and self._run_id != run_id:
            raise RuntimeError(f"logger already writes to run {self._run_id}; cannot switch to {run_id}")
        self._run_id = run_id
        self.resumed = True

    def keep_open_after_fit(self) -> None:
        """The next successful ``finalize`` logs checkpoints but leaves the run RUNNING (a test follows)."""
        self._keep_open = True

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if not self.params_from_config:
            self.log_params(params)

    @rank_zero_only
    def log_params(self, params: Any) -> None:
        """Log (nested) params; on a resumed run, only those not logged yet."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        # LightningCLI's bookkeeping keys (``_instantiator``, ``_class_path``) are not hyperparameters.
        params = {k: v for k, v in _flatten_dict(_convert_params(params)).items() if not k.startswith("_")}
        if not self.resumed:
            return super().log_hyperparams(params)
        logged = self.experiment.get_run(self.run_id).data.params
        fresh = {}
        for key, value in params.items():
            if key not in logged:
                fresh[key] = value
            elif logged[key] != str(value)[:250]:
                log.warning("Resumed run %s keeps %s=%s; ignoring new value %s", self.run_id, key, logged[key], value)
        if fresh:
            super().log_hyperparams(fresh)
        return None

    @override
    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._keep_open and status == "success":
            self._keep_open = False
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)
            return
        super().finalize(status)
