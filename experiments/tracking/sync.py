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
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from medrobust.experiments.tracking.journal_replay import send_pending
from medrobust.experiments.tracking.run_journal import JOURNAL_FOLDER, JournalInUse, RunJournal
from medrobust.experiments.tracking.server_health import server_is_up
from medrobust.utilities.errors import InputError
from medrobust.utilities.tracking_uri import redact_text, redact_uri


def sync_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medrobust sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("journals", nargs="*", type=Path,
                        help=f"run journals (default: every one under runs/{JOURNAL_FOLDER})")  # fmt: skip
    parser.add_argument("--tracking-uri", help="the server to send to (default: the one each journal was written "
                        "for; where that has credentials, which are never stored, $MLFLOW_TRACKING_URI)")  # fmt: skip
    args = parser.parse_args(argv)
    found = (Path("runs") / JOURNAL_FOLDER).glob("*")
    paths = args.journals or sorted(p for p in found if p.is_dir() and not p.name.startswith(".") and
                                    not p.name.endswith(".rejected"))  # fmt: skip
    if not paths:
        print(f"medrobust sync: nothing to send (no journal under runs/{JOURNAL_FOLDER})")
        return 0
    failed = 0
    for path in paths:
        try:
            _sync_one(path, args.tracking_uri)
        except (InputError, FileNotFoundError, JournalInUse, OSError, MlflowException) as err:
            failed += 1
            print(f"medrobust sync: {path}: {redact_text(str(err))}", file=sys.stderr)
    return 1 if failed else 0


def _sync_one(path: Path, tracking_uri: str | None) -> None:
    journal = RunJournal.open(path)
    try:
        named = journal.tracking_uri or ""
        uri = tracking_uri or (named if "***" not in named else os.environ.get("MLFLOW_TRACKING_URI", ""))
        if not uri.startswith(("http://", "https://")):
            raise InputError(f"give the tracking server with --tracking-uri (the journal names {named or '-'!r})")
        if not server_is_up(uri):
            raise InputError(f"the tracking server {redact_uri(uri)} is unreachable; nothing was sent")
        with tqdm(total=journal.count_pending(), desc=f"run {journal.run_id}", unit="record", leave=False) as bar:
            sent, aside = send_pending(MlflowClient(uri), journal, uri, progress=bar.update)
        rest = journal.count_pending()
        note = f", {aside} refused (kept in {journal.root / (journal.run_id + '.rejected.jsonl')})" if aside else ""
        print(f"run {journal.run_id}: {sent} record(s) sent to {redact_uri(uri)}{note}, {rest} left")
        if rest:
            raise InputError(f"{rest} record(s) of run {journal.run_id} are still unsent")
    finally:
        journal.release()
