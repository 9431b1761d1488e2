"""Sending a :class:`~medrobust.experiments.tracking.run_journal.RunJournal`'s records to a tracking server: the
records as MLflow calls, how a record is written from a call, and what a failed send means (the server is away:
try later; the server refused the record: set it aside, say so, go on)."""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
import urllib.request
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import DatasetInput as ProtoDatasetInput
from mlflow.protos.service_pb2 import Metric as ProtoMetric
from mlflow.utils.proto_json_utils import message_to_json, parse_dict

from medrobust.experiments.tracking.run_journal import RunJournal
from medrobust.utilities.tracking_uri import redact_uri

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


def server_is_up(tracking_uri: str, timeout: float = 2.0) -> bool:
    """One ``GET /health`` without retries: is the tracking server there now?"""
    parts = urllib.parse.urlsplit(tracking_uri)
    netloc = parts.netloc.rpartition("@")[2]  # /health needs no credentials (urllib would not take them here)
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200
    except (OSError, ValueError):  # refused, timed out, an HTTP error status, a malformed URI
        return False


class Rejected(Exception):
    """The server is up and refused a record: sending it again will not help."""


def send_pending(
    client: MlflowClient, journal: RunJournal, tracking_uri: str, stop: Any = None, progress: Any = None
) -> int:
    """Send ``journal``'s unsent records in order through ``client`` until done, the server is away (the
    error propagates; what was sent is marked), or ``stop()`` is true. A record the server
    refuses while up is appended to ``rejected.jsonl`` with the reason, logged as a warning, and skipped. Returns
    the number of records sent (``progress(n)`` is called after each send)."""
    sent = 0
    records = list(journal.pending())
    while records and not (stop and stop()):
        group = [records.pop(0)]
        while group[0]["op"] == "batch" and records and records[0]["op"] == "batch" and len(group) < BATCH_RECORDS:
            group.append(records.pop(0))
        if not server_is_up(tracking_uri):  # away: fail now, not after MLflow's minutes of retries
            raise ConnectionError(f"the tracking server {redact_uri(tracking_uri)} does not answer /health")
        try:
            send_group(client, journal, group, tracking_uri)
        except Exception as err:
            if server_is_up(tracking_uri) and not _transient(err):
                set_aside(journal, group, err)
            else:
                raise
        journal.mark_sent(group[-1]["seq"])
        sent += len(group)
        if progress is not None:
            progress(len(group))
    return sent


def _transient(err: Exception) -> bool:
    """An error a later try may not repeat: the server's own failure or a request that never reached it."""
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500 or "Max retries exceeded" in str(err)
    status = getattr(getattr(err, "response", None), "status_code", None)  # an artifact upload's HTTPError
    if status is not None:
        return status >= 500
    # connection refused or reset, a timeout; not a file missing from the journal
    return isinstance(err, ConnectionError | TimeoutError) or type(err).__module__.startswith(("requests", "urllib3"))


def set_aside(journal: RunJournal, group: list[dict[str, Any]], err: Exception) -> None:
    """Keep what the server refused, with why, beside the journal (it is never silently lost)."""
    rejected = journal.path.parent / f"{journal.run_id}.rejected.jsonl"
    with open(rejected, "a") as out:
        for record in group:
            out.write(json.dumps({**record, "error": str(err)[:2000]}) + "\n")
    log.warning(
        "the tracking server refused %d record(s) of run %s (kept in %s): %s",
        len(group),
        journal.run_id,
        rejected,
        str(err)[:500],
    )


def send_group(client: MlflowClient, journal: RunJournal, group: list[dict[str, Any]], tracking_uri: str) -> None:
    """One record, or consecutive ``batch`` records merged into one ``log_batch``."""
    run_id, first = journal.run_id, group[0]
    op = first["op"]
    if op == "batch":
        metrics = [metric_from_json(m) for record in group for m in record.get("metrics", [])]
        params = {k: v for record in group for k, v in record.get("params", [])}
        tags = {k: v for record in group for k, v in record.get("tags", [])}  # a tag set twice: its newest value
        client.log_batch(
            run_id, metrics, [Param(k, v) for k, v in params.items()], [RunTag(k, v) for k, v in tags.items()]
        )
    elif op == "delete_tag":
        client.delete_tag(run_id, first["key"])
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
        from medrobust.callbacks.helpers.model_logging import MODEL_ID_TAG, publish_model

        model_id = publish_model(journal.files(first["seq"]) / first["name"], run_id, tracking_uri)
        client.set_tag(run_id, MODEL_ID_TAG, model_id)
    else:
        raise ValueError(f"unknown journal record {op!r} in {journal.path}")


def now_ms() -> int:
    return int(time.time() * 1000)
