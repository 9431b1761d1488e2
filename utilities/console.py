"""Messages on a line of their own: a progress bar leaves its line open (carriage returns, no newline), and a
message printed then would be glued onto it."""

from __future__ import annotations

import sys
from typing import TextIO


def own_line(text: str, stream: TextIO | None = None) -> None:
    """Print ``text`` as its own line(s) on ``stream`` (stdout by default), starting a new line on a terminal."""
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    print(f"\n{text}" if isatty is not None and isatty() else text, file=stream, flush=True)
