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
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_SECRET_KEYS.search(k) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return uri  # nothing to hide; rebuilding would also turn sqlite:///x into sqlite:/x
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*") if pairs else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_credentials(uri: str) -> bool:
    return redact_uri(uri) != uri


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with the user info of every URI in it replaced by ``***``: MLflow's
    own messages quote the request URL, credentials included."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
