"""How a user finds a run again: its experiment, name, id and MLflow UI link, printed when it starts and ends.

For a tracking server the link is the server's own page of the run; for a database store (the default
``sqlite:///mlflow.db``) it is the page a local ``mlflow ui`` serves, with that command (absolute path, so it works
from any folder). Credentials in a URI are never printed."""

from __future__ import annotations

import random
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from medrobust.utilities.tracking_uri import redact_uri

#: where ``mlflow ui`` serves by default
LOCAL_UI = "http://127.0.0.1:5000"


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def serve_command(tracking_uri: str) -> str:
    """The command that serves a database store's UI (a relative SQLite path made absolute); empty for a server."""
    if is_server(tracking_uri):
        return ""
    uri = redact_uri(tracking_uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        uri = prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return f"mlflow ui --backend-store-uri {uri}"


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server without credentials or query, else a local ``mlflow ui``."""
    if not is_server(tracking_uri):
        return LOCAL_UI
    parts = urlsplit(tracking_uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run: on the tracking server, or on a local ``mlflow ui`` of the database store."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def run_banner(
    event: str, tracking_uri: str, experiment: str, experiment_id: str, run_name: str | None, run_id: str
) -> str:
    """Two lines: ``medrobust: <event> run 'NAME' (id ID) in experiment 'EXP'`` and the UI link (with the command
    that serves it, for a database store)."""
    serve = serve_command(tracking_uri)
    link = run_url(tracking_uri, experiment_id, run_id) + (f"  (after: {serve})" if serve else "")
    return f"medrobust: {event} run {run_name!r} (id {run_id}) in experiment {experiment!r}\n  {link}"


def distinct_run_name() -> str:
    """An MLflow-style name (``bright-owl-417``) drawn from the operating system's entropy, not from the ``random``
    module that ``seed_everything`` seeds: two seeded runs get different names."""
    from mlflow.utils.name_utils import _GENERATOR_NOUNS, _GENERATOR_PREDICATES

    rng = random.SystemRandom()
    return f"{rng.choice(_GENERATOR_PREDICATES).lower()}-{rng.choice(_GENERATOR_NOUNS).lower()}-{rng.randint(0, 999)}"
