"""``python -m experiments`` is the ``medrobust`` command."""

from experiments.cli import main

main()
