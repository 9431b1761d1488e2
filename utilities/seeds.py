"""The run's seed, for the parts that derive their own random streams from it."""

from __future__ import annotations

import os


def run_seed() -> int:
    """``seed_everything``'s seed (Lightning keeps it in ``PL_GLOBAL_SEED``, on every DDP process), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))
