"""``python -m medrobust.experiments`` is the ``medrobust`` command."""

from medrobust.experiments.cli import main

main()
