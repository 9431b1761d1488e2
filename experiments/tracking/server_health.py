"""Is the tracking server there now? One ``GET /health`` through MLflow's own HTTP layer (its TLS settings and
credentials from the environment), without retries."""

from __future__ import annotations

from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request


def server_is_up(tracking_uri: str, timeout: float = 2.0) -> bool:
    """True when the server answers (any status below 500: an auth proxy's 401 is a server that is there)."""
    try:
        answer = http_request(
            get_default_host_creds(tracking_uri), "/health", "GET", max_retries=0, timeout=timeout,
            raise_on_status=False,
        )  # fmt: skip
    except Exception:  # refused, reset, timed out, a malformed URI
        return False
    return answer.status_code < 500
