"""TrackingServerAway: a read while the tracking server is away."""

from __future__ import annotations

from mlflow.exceptions import MlflowException


class TrackingServerAway(MlflowException):
    """A read while the tracking server is away: it would not see the records waiting in the run's journal."""
