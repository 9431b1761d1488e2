"""The one exception type for bad input: a setting, file or argument the user gave that cannot be used."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message says what to change.

    The ``medrobust`` command reports it in one line and exits with status 2. Every other exception, a
    ``ValueError`` from deep inside a library included, keeps its traceback: it is a bug or a failure, not a typo.
    """
