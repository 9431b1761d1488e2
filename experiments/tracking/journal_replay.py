"""Sending a :class:`~medrobust.experiments.tracking.run_journal.RunJournal`'s records to a tracking server: the
records as MLflow calls, how a record is written from a call, and what a failed send means (the server is away: try
later; the run is not on this server: stop, keep the journal; the server refused one record: set that one aside, say
so, go on)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import DatasetInput as ProtoDatasetInput
from mlflow.protos.service_pb2 import Metric as ProtoMetric
from mlflow.utils.proto_json_utils import message_to_json, parse_dict

from medrobust.experiments.tracking.run_journal import RunJournal
from medrobust.experiments.tracking.server_health import server_is_up
from medrobust.utilities.errors import InputError
from medrobust.utilities.tracking_uri import redact_text, redact_uri

log = logging.getLogger(__name__)

#: consecutive metric/param/tag records sent as one ``log_batch`` (MLflow splits it into requests of its limits)
BATCH_RECORDS = 200


def to_json(entity: Metric | DatasetInput) -> dict[str, Any]:
    return json.loads(message_to_json(entity.to_proto()))


def metric_from_json(data: dict[str, Any]) -> Metric:
    proto = ProtoMetric()
    parse_dict(data, proto)  # fills the message in place
    return Metric.from_proto(proto)


def dataset_input_from_json(data: dict[str, Any]) -> DatasetInput:
    proto = ProtoDatasetInput()
    parse_dict(data, proto)
    return DatasetInput.from_proto(proto)


def now_ms() -> int:
    return int(time.time() * 1000)


class RunNotOnServer(InputError):
    """The journal's run is not on this tracking server (a wrong URI): nothing is sent, the journal is kept."""


def send_pending(
    client: MlflowClient,
    journal: RunJournal,
    tracking_uri: str,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[int], Any] | None = None,
    give_up: bool = False,
) -> tuple[int, int]:
    """Send ``journal``'s unsent records in order through ``client`` until done or ``stop()``. Returns (sent, set
    aside). The server away: the error propagates (what was sent is marked). The run not on the server:
    :class:`RunNotOnServer`. A record the server refuses while up is appended to ``<run_id>.rejected.jsonl`` beside
    the journal with the reason, logged, and skipped (a merged batch is first resent record by record, so only the
    refused ones go); with ``give_up``, so is one that keeps failing with a server error."""
    sent = aside = 0
    records = list(journal.pending())
    while records and not (stop and stop()):
        group = [records.pop(0)]
        while group[0]["op"] == "batch" and records and records[0]["op"] == "batch" and len(group) < BATCH_RECORDS:
            group.append(records.pop(0))
        if not server_is_up(tracking_uri):  # away: fail now, not after MLflow's minutes of retries
            raise ConnectionError(f"the tracking server {redact_uri(tracking_uri)} does not answer /health")
        try:
            send_group(client, journal, group, tracking_uri)
            sent += len(group)
        except Exception as err:
            refused = _refused(err, client, journal, tracking_uri, give_up)
            if len(group) == 1:
                set_aside(journal, group, refused)
                aside += 1
            else:  # which of the merged records was it?
                for record in group:
                    try:
                        send_group(client, journal, [record], tracking_uri)
                        sent += 1
                    except Exception as one:
                        set_aside(journal, [record], _refused(one, client, journal, tracking_uri, give_up))
                        aside += 1
        journal.mark_sent(group[-1]["seq"])
        if progress is not None:
            progress(len(group))
    return sent, aside


#: HTTP statuses that say nothing about the record: credentials, permissions, a timeout, rate limiting
SERVER_LEVEL = (401, 403, 408, 429)


def _refused(err: Exception, client: MlflowClient, journal: RunJournal, tracking_uri: str, give_up: bool) -> Exception:
    """``err`` if the server refused the record for good; raises when sending again later may work (the server away,
    failing, or refusing us rather than the record; and, when giving up on server errors, unless the run itself can
    be read), or when the run is not on this server."""
    if f"Run with id={journal.run_id} not found" in str(err):
        raise RunNotOnServer(
            f"run {journal.run_id} is not on {redact_uri(tracking_uri)}: is it the server the run was started on? "
            f"Nothing was sent; the journal {journal.path} is kept"
        ) from None
    if not server_is_up(tracking_uri) or _status(err) in SERVER_LEVEL:
        raise err
    if _transient(err):
        if not give_up:
            raise err
        client.get_run(journal.run_id)  # the server answers for the run but fails this record: set it aside
    return err


def _status(err: Exception) -> int | None:
    """The HTTP status an MLflow error maps to, or an artifact upload's ``HTTPError`` carries."""
    if isinstance(err, MlflowException):
        return err.get_http_status_code()
    return getattr(getattr(err, "response", None), "status_code", None)


def _transient(err: Exception) -> bool:
    """An error a later try may not repeat: the server's own failure or a request that never reached it."""
    status = _status(err)
    if status is not None:
        return status >= 500 or "Max retries exceeded" in str(err)
    # connection refused or reset, a timeout; not a file missing from the journal
    return isinstance(err, ConnectionError | TimeoutError) or type(err).__module__.startswith(("requests", "urllib3"))


def set_aside(journal: RunJournal, group: list[dict[str, Any]], err: Exception) -> None:
    """Keep what the server refused, with why, beside the journal (it is never silently lost)."""
    rejected = journal.root / f"{journal.run_id}.rejected.jsonl"
    reason = redact_text(str(err))[:2000]
    for record in group:  # the files it would have uploaded are kept too
        if journal.files(record["seq"]).is_dir():
            kept = journal.root / f"{journal.run_id}.rejected" / str(record["seq"])
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(journal.files(record["seq"]), kept)
    with open(rejected, "a") as out:
        for record in group:
            out.write(json.dumps({**record, "error": reason}) + "\n")
    log.warning("medrobust: the tracking server refused %d record(s) of run %s (kept in %s): %s", len(group),
                journal.run_id, rejected, reason[:500])  # fmt: skip


def send_group(client: MlflowClient, journal: RunJournal, group: list[dict[str, Any]], tracking_uri: str) -> None:
    """One record, or consecutive ``batch`` records merged into one ``log_batch``."""
    run_id, first = journal.run_id, group[0]
    op = first["op"]
    if op == "batch":
        metrics = [metric_from_json(m) for record in group for m in record.get("metrics", [])]
        params = {k: v for record in group for k, v in record.get("params", [])}
        tags = {k: v for record in group for k, v in record.get("tags", [])}  # a tag set twice: its newest value
        client.log_batch(run_id, metrics, [Param(k, v) for k, v in params.items()],
                         [RunTag(k, v) for k, v in tags.items()])  # fmt: skip
    elif op == "delete_tag":
        try:
            client.delete_tag(run_id, first["key"])
        except MlflowException as err:
            if "No tag with name" not in str(err):
                raise  # a tag already gone (a replay) is what was asked for
    elif op == "update_run":
        client.update_run(run_id, first.get("status"), first.get("name"))
    elif op == "terminated":
        client.set_terminated(run_id, first["status"], first["end_time"])
    elif op == "artifact":
        client.log_artifact(run_id, str(journal.files(first["seq"]) / first["name"]), first.get("artifact_path"))
    elif op == "artifacts":
        client.log_artifacts(run_id, str(journal.files(first["seq"]) / first["name"]), first.get("artifact_path"))
    elif op == "inputs":
        client.log_inputs(run_id, [dataset_input_from_json(d) for d in first["datasets"]])
    elif op == "model":
        from medrobust.callbacks.helpers.model_logging import publish_model
        from medrobust.utilities.mlflow_source import MODEL_ID_TAG

        model_id = publish_model(journal.files(first["seq"]) / first["name"], run_id, tracking_uri)
        client.set_tag(run_id, MODEL_ID_TAG, model_id)
    else:
        raise ValueError(f"unknown journal record {op!r} in {journal.path}")
