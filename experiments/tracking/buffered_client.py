"""BufferedMlflowClient: an ``MlflowClient`` whose run writes go through a local journal, so that a tracking server
that goes away for a while (or for good) neither stops the training nor loses a record."""

from __future__ import annotations

import functools
import logging
import threading
import time
import types
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from medrobust.experiments.tracking.journal_replay import RunNotOnServer, now_ms, send_pending, to_json
from medrobust.experiments.tracking.run_journal import RunJournal
from medrobust.experiments.tracking.server_health import server_is_up
from medrobust.experiments.tracking.tracking_server_away import TrackingServerAway
from medrobust.utilities.tracking_uri import redact_text, redact_uri

log = logging.getLogger(__name__)

#: the client's methods that write a run: journaled, never sent from the caller's thread
JOURNALED = frozenset(
    {"log_batch", "log_metric", "log_param", "set_tag", "delete_tag", "update_run", "set_terminated", "log_artifact",
     "log_artifacts", "log_inputs"}
)  # fmt: skip
#: the client's methods that write through the journaled ones (``log_figure`` -> ``log_artifact``)
THROUGH_JOURNALED = frozenset({"log_text", "log_dict", "log_figure", "log_image", "log_table", "log_stream"})
#: seconds between two looks at a server that was away; the longest wait after repeated server errors
RETRY_EVERY, LONGEST_BACKOFF = 2.0, 30.0
#: consecutive server errors (5xx while /health answers) after which a record is set aside
MAX_TRIES = 5


class BufferedMlflowClient(MlflowClient):
    """Writes to a run (metrics, params, tags, status, artifacts, dataset inputs, and a model prepared offline) are
    appended to the run's :class:`~medrobust.experiments.tracking.run_journal.RunJournal` and sent, in order, by a
    background thread; the caller waits for the disk only (an fsync, and a copy of an uploaded file). While the server
    is away the thread looks for it every 2 s (``GET /health``) and sends the backlog when it is back. Every other
    call (reads, run creation, the model registry) first waits for the backlog to be sent (up to ``wait`` seconds,
    a few once a wait has timed out and nothing was sent since), so it sees what was written before it; if the
    server is still away it raises
    :class:`~medrobust.experiments.tracking.tracking_server_away.TrackingServerAway` instead of MLflow's minutes of
    retries.

    Used by :class:`~medrobust.experiments.tracking.mlflow_logger.MLflowRunLogger` for ``http(s)://`` tracking
    servers; the embedded SQLite store and a direct database URI are written directly.

    Args:
        tracking_uri: the tracking server.
        journal_root: the journals' folder (``<default_root_dir>/unsent``).
        wait: how long a read waits for the backlog.
    """

    def __init__(self, tracking_uri: str, journal_root: str | Path, wait: float = 60.0) -> None:
        super().__init__(tracking_uri)
        self.journal_root = Path(journal_root)
        self.wait = wait
        self._uri = tracking_uri
        self._sender = MlflowClient(tracking_uri)
        self._journals: dict[str, RunJournal] = {}
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failures = 0
        #: a wait for the backlog timed out, and nothing was sent since: later waits are short
        self._timed_out = False
        #: whether the last send reached the server
        self.online = True

    # ---------------------------------------------------------------- the journal and its sender
    def journal(self, run_id: str) -> RunJournal:
        """The run's journal (a leftover one from an earlier process is opened, and its records are sent first)."""
        with self._lock:  # the system-metrics thread writes too: one journal object per run
            if run_id not in self._journals:
                self._journals[run_id] = RunJournal(self.journal_root, run_id, self._uri)
            journal = self._journals[run_id]
        if journal.count_pending():
            self._start()
        return journal

    def journal_path(self, run_id: str) -> Path:
        """Where the run's journal is (without opening it or starting a sender)."""
        return self.journal_root / run_id

    def pending(self) -> dict[str, int]:
        """Unsent records per run."""
        counts = {run_id: journal.count_pending() for run_id, journal in list(self._journals.items())}
        return {run_id: count for run_id, count in counts.items() if count}

    def _append(self, run_id: str, op: str, files: list[Any] | None = None, **args: Any) -> None:
        self.journal(run_id).append(op, files, **args)
        self._start()
        with self._wake:
            self._wake.notify_all()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                if not self._closed:
                    return
                self._thread.join(timeout=10)  # closing: let it end, then start afresh
            self._closed = False
            self._thread = threading.Thread(target=self._send_loop, name="medrobust-mlflow-journal", daemon=True)
            self._thread.start()

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self.pending():
                    self._wake.wait(1.0)
                if self._closed:
                    return
            pause = self._send_once()
            if pause:
                with self._wake:
                    self._wake.wait(pause)

    def _send_once(self) -> float:
        """One pass over the journals; returns how long to wait before the next (0: go on)."""
        uri = redact_uri(self._uri)
        try:
            sent = 0  # send_pending looks at /health before each send: away, it raises ConnectionError at once
            for journal in list(self._journals.values()):
                give_up = self._failures >= MAX_TRIES
                done, aside = send_pending(self._sender, journal, self._uri, lambda: self._closed, give_up=give_up)
                sent += done + aside
            if not self.online:
                log.warning("medrobust: the tracking server %s is back; the backlog is being sent", uri)
            self.online, self._failures = True, 0
            if sent:
                self._timed_out = False
            return 0.0 if sent else 0.5  # nothing sent: a record is still being written
        except RunNotOnServer as err:
            log.error("medrobust: %s", err)
            self._closed = True
            return 0.0
        except Exception as err:  # away (or failing): keep the records, look again later
            reason = redact_text(str(err))[:300]
            if not isinstance(err, ConnectionError) and server_is_up(self._uri):
                self._failures += 1
                log.warning("medrobust: the tracking server %s failed a request (%s); trying again", uri, reason)
                return min(RETRY_EVERY * 2**self._failures, LONGEST_BACKOFF)
            if self.online:
                log.warning("medrobust: the tracking server %s is unreachable (%s); records are kept in %s and "
                            "sent when it is back", uri, reason, self.journal_root)  # fmt: skip
            self.online = False
            return RETRY_EVERY

    def flush(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``wait`` if None; at most 5 s again after a wait timed out with nothing
        sent since) for every record to be sent; True when none is left."""
        timeout = self.wait if timeout is None else timeout
        deadline = time.monotonic() + (min(timeout, 5.0) if self._timed_out else timeout)
        while self.pending():
            if time.monotonic() >= deadline or self._thread is None or not self._thread.is_alive():
                self._timed_out = True
                return False
            with self._wake:
                self._wake.notify_all()
            time.sleep(0.05)
        self._timed_out = False
        return True

    def close(self, timeout: float | None = None) -> dict[str, int]:
        """Flush (up to ``timeout``), stop the sender, let go of the journals, and return what is left unsent."""
        self.flush(timeout)
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        left = self.pending()
        for journal in list(self._journals.values()):
            journal.release()
        return left

    # ---------------------------------------------------------------- journaled writes
    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        params, tags = [[p.key, str(p.value)] for p in params], [[t.key, str(t.value)] for t in tags]
        self._append(run_id, "batch", metrics=[to_json(m) for m in metrics], params=params, tags=tags)

    def log_metric(self, run_id, key, value, timestamp=None, step=None, synchronous=None, dataset_name=None,
                   dataset_digest=None, model_id=None):  # fmt: skip
        metric = Metric(key, float(value), timestamp or now_ms(), step or 0, model_id=model_id,
                        dataset_name=dataset_name, dataset_digest=dataset_digest)  # fmt: skip
        self.log_batch(run_id, metrics=[metric])

    def log_param(self, run_id, key, value, synchronous=None):
        self._append(run_id, "batch", params=[[key, str(value)]])
        return value

    def set_tag(self, run_id, key, value, synchronous=None):
        self._append(run_id, "batch", tags=[[key, str(value)]])

    def delete_tag(self, run_id, key):
        self._append(run_id, "delete_tag", key=key)

    def update_run(self, run_id, status=None, name=None):
        self._append(run_id, "update_run", status=status, name=name)

    def set_terminated(self, run_id, status=None, end_time=None):
        self._append(run_id, "terminated", status=status or "FINISHED", end_time=end_time or now_ms())

    def log_artifact(self, run_id, local_path, artifact_path=None):
        self._append(run_id, "artifact", [local_path], name=Path(local_path).name, artifact_path=artifact_path)

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        self._append(run_id, "artifacts", [local_dir], name=Path(local_dir).name, artifact_path=artifact_path)

    def log_inputs(self, run_id, datasets=None, models=None):
        if models:
            raise NotImplementedError("medrobust's journal logs dataset inputs only")
        self._append(run_id, "inputs", datasets=[to_json(d) for d in datasets or []])

    def log_prepared_model(self, run_id: str, folder: str | Path) -> None:
        """A model prepared by :func:`~medrobust.callbacks.helpers.model_logging.prepare_model`, logged (and
        named in the run's ``model.id`` tag) when its turn comes."""
        self._append(run_id, "model", [folder], name=Path(folder).name)


def _after_backlog(method: Any) -> Any:
    @functools.wraps(method)
    def call(self: BufferedMlflowClient, *args: Any, **kwargs: Any) -> Any:
        if not self.flush():  # a read sees what was written before it
            left = sum(self.pending().values())
            raise TrackingServerAway(
                f"MLflow {method.__name__}: the tracking server {redact_uri(self._uri)} is unreachable and {left} "
                f"record(s) wait in {self.journal_root}; nothing is lost (`medrobust sync` sends them)"
            )
        return method(self, *args, **kwargs)

    return call


# Every other public method (reads, run creation, the registry) waits for the backlog first. A write method that a
# later MLflow adds is then correct, only not journaled.
for _name, _method in vars(MlflowClient).items():
    if (
        isinstance(_method, types.FunctionType)
        and not _name.startswith("_")
        and _name not in JOURNALED | THROUGH_JOURNALED
        and _name not in vars(BufferedMlflowClient)
    ):
        setattr(BufferedMlflowClient, _name, _after_backlog(_method))
