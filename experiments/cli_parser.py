"""The argument parser of ``medrobust``: LightningCLI's, with callback errors said in one line."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

import yaml
from jsonargparse import set_loader
from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from medrobust.experiments.legacy_class_paths import legacy_yaml_load, upgrade_argument

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


def condense_parser_error(message: str) -> str:
    """jsonargparse's error on one line, a ``Literal`` type said as its choices: ``Parser key "checkpoint.rule":
    expected one of 'clean_auroc', ..., 'last'. Got value: best_auc``."""
    text = " ".join(message.split())
    return re.sub(r"Expected a (?:typing\.)?Literal\[(.*?)\]", r"expected one of \1", text)


#: YAML as jsonargparse reads it, with pre-``medrobust.`` class paths upgraded (and a warning naming the new path)
set_loader("medrobust", legacy_yaml_load, exceptions=(yaml.YAMLError,))


class MedRobustParser(LightningArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parser_mode", "medrobust")
        super().__init__(*args, **kwargs)

    @override
    def parse_args(self, args=None, *rest, **kwargs):  # type: ignore[override]
        """Command-line values that name a pre-namespace class path (``--trainer.callbacks+=<old path>``) are upgraded
        too."""
        args = sys.argv[1:] if args is None else args
        return super().parse_args([upgrade_argument(a) for a in args], *rest, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """A bad option in one or two lines (not the usage of every option, which ``--help`` prints)."""
        if not self.exit_on_error:
            super().error(message, ex)
        short = condense_callback_error(message)
        if short is not None:
            print(f"medrobust: error: {short}", file=sys.stderr)
            print(
                "(options after --trainer.callbacks+=<Class> go to that callback; see medrobust fit --help)",
                file=sys.stderr,
            )
        else:
            print(f"medrobust: error: {condense_parser_error(message)}", file=sys.stderr)
            print(f"({self.prog.replace(' [options]', '')} --help lists every option and its choices)", file=sys.stderr)
        raise SystemExit(2)
