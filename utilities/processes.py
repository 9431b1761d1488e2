"""Whether a process that left its id in a run (tag ``medrobust.pid`` or ``sweep.pid``) on this host still runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs and is a medrobust process (a reused pid of another program counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"experiments" in cmdline.read_bytes() or b"medrobust" in cmdline.read_bytes()
