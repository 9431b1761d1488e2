"""RunJournal: the records of one MLflow run not yet sent to its tracking server, on local disk, in order.

A write-ahead log: every record is appended (and fsync'ed: a few milliseconds) before it is sent, and marked sent
only once the server took it, so a server that goes away, a process that is killed, or a server that never returns
loses nothing. The files a record uploads are copied into the journal when it is written (the caller may delete or
overwrite its own). ``medrobust sync`` (:mod:`~medrobust.experiments.tracking.sync`) or the next process that writes
the same run sends what is left. Replaying a record the server already took duplicates nothing: metrics with the same
key, value, timestamp and step are one row in MLflow's store, params and tags are set to the same value, artifacts
overwritten, and a logged model is looked up by its upload id before one is made.

Layout of ``<root>/<run_id>/``: ``meta.json`` (the tracking URI, redacted, and the run), ``records.jsonl`` (one JSON
object per line: ``seq``, ``op``, its arguments), ``sent`` (the ``seq`` of the newest record the server took) and
``files/<seq>/`` (the copies). ``<root>/.<run_id>.lock`` is held (``flock``) by the one process that writes or sends
the journal.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medrobust.utilities.tracking_uri import redact_uri

log = logging.getLogger(__name__)

#: where a run's journal lives under the default root directory of the runs (``runs/``)
JOURNAL_FOLDER = "unsent"


class JournalInUse(RuntimeError):
    """Another process holds the journal (a run still writing it, or another ``medrobust sync``)."""


class RunJournal:
    """The unsent records of the run ``run_id`` in ``<root>/<run_id>/`` (created on the first record).

    Args:
        root: the journals' folder (``<default_root_dir>/unsent``).
        run_id: the MLflow run.
        tracking_uri: the server the records are for (stored redacted).
        wait_for_lock: block until another process lets go of the journal (a writer); else raise
            :class:`JournalInUse` (``medrobust sync``).
    """

    def __init__(
        self, root: str | Path, run_id: str, tracking_uri: str | None = None, wait_for_lock: bool = True
    ) -> None:
        self.root, self.path, self.run_id, self.tracking_uri = Path(root), Path(root) / run_id, run_id, tracking_uri
        self._lock = threading.Lock()
        self._hold = self._lock_file(wait_for_lock)
        self._seq, self._sent = self._read_state()

    @classmethod
    def open(cls, path: str | Path) -> RunJournal:
        """An existing journal folder, as ``medrobust sync`` is given it (:class:`JournalInUse` if a process holds
        it)."""
        path = Path(path)
        meta = path / "meta.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{path} is no run journal: it has no meta.json")
        info = json.loads(meta.read_text())
        return cls(path.parent, info["run_id"], info.get("tracking_uri"), wait_for_lock=False)

    def _lock_file(self, wait: bool) -> Any:
        self.root.mkdir(parents=True, exist_ok=True)
        hold = open(self.root / f".{self.run_id}.lock", "a")  # noqa: SIM115 (held until release or exit)
        try:
            fcntl.flock(hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                hold.close()
                raise JournalInUse(f"{self.path} is in use by another process (the run, or another sync)") from None
            log.warning("medrobust: waiting for another process (a `medrobust sync`?) to let go of %s", self.path)
            fcntl.flock(hold, fcntl.LOCK_EX)
        except OSError as err:  # a file system without flock (some NFS or Lustre mounts): go on without the lock
            log.warning("medrobust: %s cannot be locked (%s); do not sync it while the run writes it", self.path, err)
        return hold

    def release(self) -> None:
        """Let another process (a later sync, a resumed run) take the journal."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def _read_state(self) -> tuple[int, int]:
        records = self.path / "records.jsonl"
        marker = self.path / "sent"
        sent = int(marker.read_text()) if marker.is_file() else 0
        if not records.is_file():
            return sent, sent
        text = records.read_text()
        if text and not text.endswith("\n"):  # the process died mid-write: that last line is no record
            text = text[: text.rfind("\n") + 1]
            records.write_text(text)
        seqs = [record["seq"] for record in _parse(text)]
        return max([*seqs, sent]), sent

    def append(self, op: str, files: list[str | Path] | None = None, **args: Any) -> int:
        """Write one record (fsync'ed), with copies of ``files`` (files or folders); returns its ``seq``."""
        staged = self._stage(files) if files else None  # copied outside the lock: other writers do not wait
        try:
            return self._write(op, staged, args)
        finally:
            if staged is not None and staged.exists():  # the record failed: no copy is left behind
                shutil.rmtree(staged, ignore_errors=True)

    def _write(self, op: str, staged: Path | None, args: dict[str, Any]) -> int:
        with self._lock:
            if self._hold is None:  # released (the run ended) and written again
                self._hold = self._lock_file(True)
            self.path.mkdir(parents=True, exist_ok=True)
            meta = self.path / "meta.json"
            if not meta.is_file():
                info = {"run_id": self.run_id, "tracking_uri": redact_uri(self.tracking_uri or "")}
                meta.write_text(json.dumps(info) + "\n")
            seq = self._seq + 1
            if staged is not None:
                (self.path / "files").mkdir(exist_ok=True)
                os.replace(staged, self.files(seq))
            line = json.dumps({"seq": seq, "op": op, **args}, default=str)
            with open(self.path / "records.jsonl", "a") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
            self._seq = seq
            return seq

    def _stage(self, files: list[str | Path]) -> Path:
        staged = self.root / f".staging-{uuid.uuid4().hex}"
        staged.mkdir(parents=True)
        for file in map(Path, files):
            if file.is_dir():
                shutil.copytree(file, staged / file.name)
            else:
                shutil.copy2(file, staged / file.name)
        return staged

    def files(self, seq: int) -> Path:
        """The folder of the copies record ``seq`` uploads."""
        return self.path / "files" / str(seq)

    def sent(self) -> int:
        """The ``seq`` of the newest record the server took (0: none)."""
        return self._sent

    def pending(self) -> Iterator[dict[str, Any]]:
        """The records not sent yet, oldest first."""
        records = self.path / "records.jsonl"
        if records.is_file():
            done = self._sent
            yield from (record for record in _parse(records.read_text()) if record["seq"] > done)

    def count_pending(self) -> int:
        return self._seq - self._sent

    def mark_sent(self, seq: int) -> None:
        """Records up to ``seq`` are on the server: remember it (atomically) and drop their copies; once all are
        sent, the journal's folder goes."""
        with self._lock:
            self._sent = max(self._sent, seq)
            if self._sent >= self._seq:  # everything is on the server: the journal has done its job
                shutil.rmtree(self.path, ignore_errors=True)
                self._seq = self._sent = 0
                return
            marker = self.path / "sent"
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(str(self._sent))
            os.replace(tmp, marker)
            files = self.path / "files"
            for folder in files.iterdir() if files.is_dir() else ():
                if folder.name.isdigit() and int(folder.name) <= self._sent:
                    shutil.rmtree(folder, ignore_errors=True)


def _parse(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        try:
            yield json.loads(line)
        except ValueError:  # a line torn by a crash: skipped, the records after it still count
            continue
