"""The argument parser of ``medrobust``: LightningCLI's, with callback errors said in one line."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

_PROBLEM = re.compile(r"- Problem with given class_path '([^']+)':\n((?:[ \t]{6,}.*(?:\n|$))+)")
_GENERIC = ("lightning.Callback", "lightning.pytorch.callbacks.callback.Callback", "lightning.pytorch.Callback")


def condense_callback_error(message: str) -> str | None:
    """jsonargparse's error for a bad ``trainer.callbacks`` entry lists every type of the union it tried (a list of
    callbacks, one callback, None) and repeats the problem for the generic ``Callback``; keep the callback's own
    problem. ``None`` when the message is not about callbacks."""
    if 'Parser key "trainer.callbacks"' not in message:
        return None
    problems = [(cls, " ".join(text.split())) for cls, text in _PROBLEM.findall(message) if cls not in _GENERIC]
    if not problems:
        return None
    return "; ".join(f"trainer.callbacks: {cls}: {text}" for cls, text in dict(problems).items())


class MedRobustParser(LightningArgumentParser):
    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        short = condense_callback_error(message) if self.exit_on_error else None
        if short is None:
            super().error(message, ex)
        print(f"medrobust: error: {short}", file=sys.stderr)
        print(
            "(options after --trainer.callbacks+=<Class> go to that callback; see medrobust fit --help)",
            file=sys.stderr,
        )
        raise SystemExit(2)
