"""MLflowRunLogger: Lightning's MLFlowLogger with medrobust's defaults and resume semantics."""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from mlflow.exceptions import MlflowException
from typing_extensions import override

from medrobust.experiments.tracking.buffered_client import BufferedMlflowClient
from medrobust.experiments.tracking.run_banner import distinct_run_name, run_banner
from medrobust.experiments.tracking.run_journal import JOURNAL_FOLDER
from medrobust.utilities.console import own_line
from medrobust.utilities.errors import InputError
from medrobust.utilities.processes import host
from medrobust.utilities.tracking_uri import has_credentials, redact_uri

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: the experiment tag MLflow's UI reads to open an experiment on its runs table instead of the GenAI traces overview
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: set on a run that Lightning's SLURM requeue handler stopped: the run is KILLED, to be resumed, not FINISHED
REQUEUED_TAG = "medrobust.requeued"
#: the host, process id and subcommand writing a run (updated when it is resumed)
OWNER_HOST, OWNER_PID, OWNER_COMMAND = "medrobust.host", "medrobust.pid", "medrobust.command"


def experiment_url(server: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs table. MLflow 3.17's UI opens GenAI pages by default, whatever the
    experiment's kind; ``workflowType=machine_learning`` switches it to model training (the browser remembers)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def mark_model_training(client: Any, experiment_id: str) -> None:
    """Tag an experiment as model training, so MLflow's UI opens it on the runs table (once; cheap to repeat)."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of the active experiment ``name``, created (and marked as model training) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name)
    elif experiment.lifecycle_stage != "active":
        raise InputError(f"MLflow experiment {name!r} is deleted; restore it or use another name")
    else:
        experiment_id = experiment.experiment_id
    mark_model_training(client, experiment_id)
    return experiment_id


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store ``sqlite:///mlflow.db``.

    A URI with credentials (``postgresql://user:password@host/db``) is used as given but never printed or saved:
    configs, params, checkpoints and messages get :func:`~medrobust.utilities.tracking_uri.redact_uri`'s form.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("file:") or "://" not in uri:
        raise InputError(
            f"MLflow tracking URI {redact_uri(uri)!r} is a file store, which this MLflow no longer writes. Use a "
            f"database (e.g. {DEFAULT_TRACKING_URI}) or a server (http://127.0.0.1:5000)."
        )
    if has_credentials(uri):
        # MLflow prints "View run ... at: <uri>" when a run ends; with credentials in the URI that would print them.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


class MLflowRunLogger(MLFlowLogger):
    """One MLflow run per training run, on the embedded SQLite store unless told otherwise.

    Differences from Lightning's ``MLFlowLogger``: the tracking URI is resolved when the logger is built (argument,
    then ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``); a run can be resumed (:meth:`resume_run`): it is set
    back to RUNNING when first used, and parameters already logged are not logged again; :meth:`keep_open_after_fit`
    keeps the run RUNNING between ``fit`` and the ``test`` that follows it; the experiment is tagged as model
    training (``mlflow.experimentKind``), so MLflow's UI opens it on the runs table; and when Lightning's SLURM
    requeue handler stops the job, the run is marked KILLED (tag ``medrobust.requeued``), not FINISHED, so that a
    sweep resumes it instead of skipping it.

    Args:
        experiment_name: MLflow experiment, created if missing.
        run_name: MLflow run name; MLflow picks one if ``None``.
        tracking_uri: see above.
        tags: extra run tags.
        log_model: Lightning's checkpoint logging (``True``: best and last with optimizer state; ``"all"``: every
            checkpoint). Off by default: :class:`~medrobust.callbacks.MLflowCheckpoints` logs the selected weights
            instead.
        artifact_location: artifact root for a newly created experiment.
        run_id: continue this run instead of creating one.
        flush_timeout: on an ``http(s)://`` tracking server, how long the end of the run waits for records that the
            server has not taken yet (it was away). What is still unsent then stays in the run's journal
            (``<default_root_dir>/unsent/<run_id>``; the run's last message names it), and ``medrobust sync`` sends
            it; see :class:`~medrobust.experiments.tracking.buffered_client.BufferedMlflowClient`.
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
        flush_timeout: float = 60.0,
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
        self.flush_timeout = flush_timeout
        if urlparse(self._tracking_uri).scheme in ("http", "https"):
            # writes go through a local journal: a server that is away neither stops the training nor loses records
            self._mlflow_client = BufferedMlflowClient(self._tracking_uri, Path("runs") / JOURNAL_FOLDER, flush_timeout)
        #: the ``medrobust`` subcommand that writes this run (``fit``, ``test``), set by the CLI; a tag of the run
        self.command: str | None = None
        self._keep_open = False
        self._checked_in = False
        #: Lightning's SLURM requeue handler ended this run as KILLED: the SIGTERM that follows leaves it so
        self._requeued = False
        #: set by :class:`~medrobust.experiments.tracking.mlflow_save_config.MLflowSaveConfig`, which logs the whole
        #: config as params
        self.params_from_config = False

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> Any:
        if not self._initialized and self._run_id is None and self._run_name is None:
            # MLflow's own generator draws from `random`, which seed_everything has seeded: every unnamed run of a
            # seeded config would get the same name
            self._run_name = distinct_run_name()
        client = super().experiment
        if not self._checked_in:
            self._checked_in = True
            if isinstance(client, BufferedMlflowClient) and self.resumed:
                client.journal(self._run_id)  # records its earlier process left unsent go first
            mark_model_training(client, self._experiment_id)
            run = client.get_run(self._run_id)
            if self.resumed and run.info.status != "RUNNING":
                client.update_run(self._run_id, status="RUNNING")  # it trains again: not FAILED or KILLED meanwhile
            self._run_name = run.info.run_name
            # who writes this run: --ckpt_path last may continue it only when that process is gone
            owner = {OWNER_HOST: host(), OWNER_PID: str(os.getpid())}
            if self.command:
                owner[OWNER_COMMAND] = self.command
            for key, value in owner.items():
                client.set_tag(self._run_id, key, value)
            self._announce("resumed" if self.resumed and run.data.metrics else "started")  # a sweep's new child starts
        return client

    def set_journal_root(self, default_root_dir: str | Path) -> None:
        """Keep unsent records under ``<default_root_dir>/unsent`` (the CLI passes the Trainer's)."""
        if isinstance(self._mlflow_client, BufferedMlflowClient):
            self._mlflow_client.journal_root = Path(default_root_dir) / JOURNAL_FOLDER

    def _announce(self, event: str) -> None:
        try:
            experiment = self._mlflow_client.get_experiment(self._experiment_id).name
        except MlflowException as err:  # a tracking-server hiccup must not fail (or hide the error of) the run
            log.warning("could not read the experiment's name: %s", err)
            experiment = self._experiment_name
        own_line(run_banner(event, self._tracking_uri, experiment, self._experiment_id, self._run_name, self._run_id))

    def resume_run(self, run_id: str) -> None:
        """Continue an existing run (call before the run is first used); it is set RUNNING when first used."""
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
        """Log (nested) params; on a resumed run, only those not logged yet (MLflow params cannot change; a changed
        setting is recorded as a new config version by
        :class:`~medrobust.experiments.tracking.mlflow_save_config.MLflowSaveConfig`)."""
        from lightning.fabric.utilities.logger import _convert_params

        # LightningCLI's bookkeeping keys (``_instantiator``, ``_class_path``) are not hyperparameters.
        flat = flatten_params(_convert_params(params) or {})
        # as MLflow stores them: str (Lightning's logger would flatten again and drop an empty list or mapping)
        params = {k: str(v) for k, v in flat.items() if not k.startswith("_")}
        if self.resumed:
            logged = self.experiment.get_run(self.run_id).data.params
            params = {k: v for k, v in params.items() if k not in logged}
        if params:
            super().log_hyperparams(params)

    @override
    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status == "finished":
            # Only Lightning's SLURM requeue handler finalizes with "finished": the job goes back to the queue and
            # the run is to be resumed, not counted as done.
            if self._initialized:
                self.experiment.set_tag(self.run_id, REQUEUED_TAG, "true")
                self.experiment.set_terminated(self.run_id, "KILLED")
                if self._send_the_rest():
                    self._announce("requeued (KILLED, to be resumed)")
                self._requeued = True
            return
        if self._requeued:
            return  # SLURM's SIGTERM after the requeue ends the job: the run stays KILLED, to be resumed
        if self._keep_open and status == "success":
            self._keep_open = False
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)
            return
        if isinstance(self._mlflow_client, BufferedMlflowClient):
            self._terminate(status)
        else:
            super().finalize(status)
        if self._initialized and self._send_the_rest():
            self._announce("finished" if status == "success" else status.upper())

    def _terminate(self, status: str) -> None:
        """Lightning's ``finalize`` without its read of the run (a journaled write must not wait for the server)."""
        if not self._initialized:
            return
        if self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        self.experiment.set_terminated(self.run_id, {"success": "FINISHED", "failed": "FAILED"}.get(status, status))

    def tracking_server_reachable(self) -> bool:
        """False when the records of this run still wait for a tracking server that is away (after waiting up to
        ``flush_timeout`` for it)."""
        client = self._mlflow_client
        return not isinstance(client, BufferedMlflowClient) or client.flush(self.flush_timeout)

    def _send_the_rest(self) -> bool:
        """On a tracking server: wait (up to ``flush_timeout``) for the journal to be sent; if the server is still
        away, say where the records are and how to send them. True when nothing is left unsent."""
        client = self._mlflow_client
        if not isinstance(client, BufferedMlflowClient):
            return True
        left = client.close(self.flush_timeout)
        for run_id, count in left.items():
            where = client.journal_path(run_id).resolve()
            own_line(
                f"medrobust: {count} record(s) of MLflow run {run_id} were not sent: the tracking server "
                f"{redact_uri(self._tracking_uri)} is unreachable. They are kept in {where}; send them with "
                f"`medrobust sync {where}` once it is back (a resumed run sends them too)."
            )
        return not left


def flatten_params(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys: "." as in the config's params (``data.subsample.test``), not Lightning's "/";
    an empty list or mapping is kept as a value (``l2_eps: []`` is a setting too; Lightning's flattening drops it)."""
    if isinstance(params, Namespace):
        params = vars(params)
    if not isinstance(params, Mapping) or (prefix and not params):
        return {prefix.removesuffix("."): params}
    flat: dict[str, Any] = {}
    for key, value in params.items():
        flat |= flatten_params(value, f"{prefix}{key}.")
    return flat
