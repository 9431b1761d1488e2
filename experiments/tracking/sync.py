"""``medrobust sync``: send the records a run kept while its tracking server was away.

    medrobust sync                       # every journal under runs/unsent
    medrobust sync runs/unsent/<run_id> --tracking-uri http://127.0.0.1:5000

A run whose server does not come back before it ends keeps its unsent records (metrics, params, tags, status,
artifacts, its model) in ``<default_root_dir>/unsent/<run_id>`` and names that folder in its last message. Sending
them again is safe: MLflow keeps one copy of a metric logged twice with the same timestamp and step, params and tags
get the same value, artifacts are overwritten, and the model is looked up before it is made.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mlflow import MlflowClient
from tqdm import tqdm

from medrobust.experiments.tracking.journal_replay import send_pending, server_is_up
from medrobust.experiments.tracking.run_journal import JOURNAL_FOLDER, RunJournal
from medrobust.utilities.errors import InputError
from medrobust.utilities.tracking_uri import redact_uri


def sync_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medrobust sync", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "journals", nargs="*", type=Path, help=f"run journals (default: every one under runs/{JOURNAL_FOLDER})"
    )
    parser.add_argument(
        "--tracking-uri",
        help="the server to send to (default: $MLFLOW_TRACKING_URI, else the one each journal was written for)",
    )
    args = parser.parse_args(argv)
    paths = args.journals or sorted(p for p in (Path("runs") / JOURNAL_FOLDER).glob("*") if p.is_dir())
    if not paths:
        print(f"medrobust sync: nothing to send (no journal under runs/{JOURNAL_FOLDER})")
        return 0
    journals = []
    for path in paths:
        try:
            journals.append(RunJournal.open(path))
        except FileNotFoundError as err:
            raise InputError(str(err)) from None
    left = 0
    for journal in journals:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or journal.tracking_uri or ""
        if "***" in uri or not uri.startswith(("http://", "https://")):
            raise InputError(
                f"{journal.path}: give the tracking server with --tracking-uri (the journal names "
                f"{redact_uri(journal.tracking_uri or '-')!r})"
            )
        if not server_is_up(uri):
            raise InputError(f"the tracking server {redact_uri(uri)} is unreachable; nothing was sent")
        pending = journal.count_pending()
        with tqdm(total=pending, desc=f"run {journal.run_id}", unit="record", leave=False) as bar:
            sent = send_pending(MlflowClient(uri), journal, uri, progress=bar.update)
        rest = journal.count_pending()
        left += rest
        rejected = journal.path.parent / f"{journal.run_id}.rejected.jsonl"
        note = f"; the server refused some (kept in {rejected})" if rejected.is_file() else ""
        print(f"run {journal.run_id}: {sent} record(s) sent to {redact_uri(uri)}, {rest} left{note}")
    return 1 if left else 0
