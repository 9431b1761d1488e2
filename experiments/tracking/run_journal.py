"""RunJournal: the records of one MLflow run not yet sent to its tracking server, on local disk, in order.

A write-ahead log: every record is appended (and fsync'ed) before it is sent, and marked sent only once the server
took it, so a server that goes away, a process that is killed, or a server that never returns loses nothing. The
files a record uploads are copied into the journal when it is written (the caller may delete or overwrite its own).
``medrobust sync`` (:mod:`~medrobust.experiments.tracking.sync`) or the next process that writes the same run sends
what is left. Replaying a record the server already took duplicates nothing: metrics with the same key, value,
timestamp and step are one row in MLflow's store, params and tags are set to the same value, artifacts overwritten,
and a logged model is looked up by its upload id before one is created.

Layout of ``<root>/<run_id>/``: ``meta.json`` (the tracking URI, redacted, and the run), ``records.jsonl`` (one JSON
object per line: ``seq``, ``op``, its arguments), ``sent`` (the ``seq`` of the newest record the server took) and
``files/<seq>/`` (the copies).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medrobust.utilities.tracking_uri import redact_uri

#: where a run's journal lives under the default root directory of the runs (``runs/``)
JOURNAL_FOLDER = "unsent"


class RunJournal:
    """The unsent records of the run ``run_id`` in ``<root>/<run_id>/`` (created on the first record).

    Args:
        root: the journals' folder (``<default_root_dir>/unsent``).
        run_id: the MLflow run.
        tracking_uri: the server the records are for (stored redacted).
    """

    def __init__(self, root: str | Path, run_id: str, tracking_uri: str | None = None) -> None:
        self.path = Path(root) / run_id
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._lock = threading.Lock()
        self._seq = self._last_seq()

    @classmethod
    def open(cls, path: str | Path) -> RunJournal:
        """An existing journal folder, as ``medrobust sync`` is given it."""
        path = Path(path)
        meta = path / "meta.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{path} is no run journal: it has no meta.json")
        info = json.loads(meta.read_text())
        return cls(path.parent, info["run_id"], info.get("tracking_uri"))

    def _last_seq(self) -> int:
        records = self.path / "records.jsonl"
        if not records.is_file():
            return 0
        last = 0
        for line in records.read_text().splitlines():
            try:
                last = json.loads(line)["seq"]
            except (ValueError, KeyError):  # a torn last line (the process died mid-write): not a record
                break
        return last

    def append(self, op: str, files: list[str | Path] | None = None, **args: Any) -> int:
        """Write one record (fsync'ed) and copy ``files`` (files or folders) into it; returns its ``seq``."""
        with self._lock:
            if self._seq == 0:
                self.path.mkdir(parents=True, exist_ok=True)
                meta = {"run_id": self.run_id, "tracking_uri": redact_uri(self.tracking_uri or "")}
                (self.path / "meta.json").write_text(json.dumps(meta) + "\n")
            self._seq += 1
            seq = self._seq
            if files:
                target = self.path / "files" / str(seq)
                target.mkdir(parents=True, exist_ok=True)
                for file in map(Path, files):
                    if file.is_dir():
                        shutil.copytree(file, target / file.name, dirs_exist_ok=True)
                    else:
                        shutil.copy2(file, target / file.name)
            line = json.dumps({"seq": seq, "op": op, **args}, default=str)
            with open(self.path / "records.jsonl", "a") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
            return seq

    def files(self, seq: int) -> Path:
        """The folder of the copies record ``seq`` uploads."""
        return self.path / "files" / str(seq)

    def sent(self) -> int:
        """The ``seq`` of the newest record the server took (0: none)."""
        marker = self.path / "sent"
        return int(marker.read_text()) if marker.is_file() else 0

    def pending(self) -> Iterator[dict[str, Any]]:
        """The records not sent yet, oldest first."""
        records = self.path / "records.jsonl"
        if not records.is_file():
            return
        done = self.sent()
        for line in records.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                return  # a torn last line
            if record["seq"] > done:
                yield record

    def count_pending(self) -> int:
        return self._seq - self.sent()

    def mark_sent(self, seq: int) -> None:
        """Records up to ``seq`` are on the server: remember it (atomically) and drop their copies."""
        with self._lock:
            if seq >= self._seq:  # everything is on the server: the journal has done its job
                shutil.rmtree(self.path, ignore_errors=True)
                self._seq = 0
                return
            marker = self.path / "sent"
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(str(seq))
            os.replace(tmp, marker)
            files = self.path / "files"
            for folder in files.iterdir() if files.is_dir() else ():
                if folder.name.isdigit() and int(folder.name) <= seq:
                    shutil.rmtree(folder, ignore_errors=True)
