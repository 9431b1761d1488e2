"""The MD5 of a file: which bytes a run used (a dataset, a checkpoint), whatever the file was called."""

from __future__ import annotations

import hashlib
from pathlib import Path

_md5_cache: dict[tuple[str, int, int], str] = {}


def file_md5(path: Path | str, chunk: int = 1 << 22) -> str:
    """MD5 of a file, memoised per process on (path, size, mtime) so fit-then-test reads hash once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _md5_cache:
        digest = hashlib.md5()
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        _md5_cache[key] = digest.hexdigest()
    return _md5_cache[key]
