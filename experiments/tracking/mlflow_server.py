"""Start a local ``mlflow server`` bound to loopback and wait until it answers (for the UI check and the tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalMlflowServer:
    """``mlflow server --host 127.0.0.1`` over ``backend_store_uri``; with ``artifacts_destination`` it proxies
    artifacts (runs then get ``mlflow-artifacts:`` URIs). Use as a context manager; ``url`` is its address (``port``:
    a given one, to start a stopped server again where its clients look for it)."""

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str | None = None,
        log: Path | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--backend-store-uri", backend_store_uri, "--workers", "1"]
        if artifacts_destination:
            cmd += ["--artifacts-destination", artifacts_destination]
        self.log = log
        stderr = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 (held by the server until it stops)
        # MLflow 3's job runner (three huey consumers, for GenAI jobs) is not needed here: a faster, lighter start
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, env=env)

    def wait(self, timeout: float = 120.0) -> LocalMlflowServer:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        tail = self.log.read_text()[-2000:] if self.log and self.log.exists() else ""
        raise RuntimeError(f"mlflow server on port {self.port} did not start. {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)

    def __enter__(self) -> LocalMlflowServer:
        return self.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
