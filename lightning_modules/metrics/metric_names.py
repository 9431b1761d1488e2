"""Metric names, built in one place so that callbacks, the module and reports agree.

Only ``[a-zA-Z0-9_/. -]`` is used, which MLflow keeps unchanged: ``val/auroc``, ``test/bal_acc``,
``train/loss/task``.
"""

from __future__ import annotations

import re

_ALLOWED = re.compile(r"^[a-zA-Z0-9_/. -]+$")


def metric_name(*parts: str | int | float) -> str:
    """Join parts with ``/``; raises if MLflow would rewrite the result."""
    name = "/".join(str(part) for part in parts)
    if not _ALLOWED.match(name):
        raise ValueError(f"metric name {name!r} has characters MLflow would strip; use [a-zA-Z0-9_/. -]")
    return name
