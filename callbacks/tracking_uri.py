"""Tracking URIs without their credentials: what may be written into checkpoints, configs, params and logs."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|credential", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` with any user info (``user:password@``, ``token@``) and secret-looking query values replaced by
    ``***``: ``postgresql://u:pw@db/mlflow`` -> ``postgresql://***@db/mlflow``. Credentials are never persisted;
    the process that needs them reads them from its environment (``$MLFLOW_TRACKING_URI``) or its arguments."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_credentials(uri: str) -> bool:
    return redact_uri(uri) != uri
