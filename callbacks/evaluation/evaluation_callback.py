"""EvaluationCallback: the skeleton the test-time evaluation callbacks share.

A subclass says what it does with the test pass; the skeleton does the rest, the same way for every one of them:

* :meth:`start` runs on every rank at the start of the test epoch, with the datamodule's test split names; it is
  where per-split accumulators are created, each on every rank (a rank that receives no batch of a small split
  still takes part in that split's reductions and gathers);
* :meth:`evaluate` gets each test batch as a :class:`TestBatch`: its split name and the global dataset ids of its
  samples (:class:`~medrobust.callbacks.evaluation.sample_ids.SampleIds`), so that a sample budget
  (:func:`within`) chooses the same images on 1 or N processes;
* :meth:`finish` reduces or gathers (``gather_rows``, ``trainer.strategy.reduce``), logs metrics through
  ``pl_module.log`` and returns the JSON report, kept as :attr:`report`;
* :meth:`artifacts` says what rank zero writes at the end of the test: the JSON report, figures, tags and settings,
  written by :func:`~medrobust.callbacks.evaluation.reporting.report` into MLflow or any other logger's folder.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.evaluation.reporting import report
from medrobust.callbacks.evaluation.sample_ids import SampleIds, within
from medrobust.callbacks.evaluation.test_batch import TestBatch

__all__ = ["EvaluationCallback", "TestBatch", "within"]


class EvaluationCallback(Callback):
    """Base class of the evaluation callbacks; see the module docstring for the seams a subclass fills in."""

    def __init__(self) -> None:
        self._report: dict[str, Any] | None = None
        self._ids = SampleIds()
        self.splits: list[str] = []

    # ------------------------------------------------------------------------------------------ the subclass's
    def start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Create the per-split state, on every rank; :attr:`splits` holds the test split names."""

    def evaluate(self, trainer: Trainer, pl_module: LightningModule, batch: TestBatch) -> None:
        """One test batch, with its split and the global dataset ids of its samples."""

    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any] | None:
        """Reduce over processes, log the metrics, and return the report (``None``: nothing to report)."""
        return None

    def artifacts(self, trainer: Trainer, report: dict[str, Any]) -> dict[str, Any]:
        """What rank zero writes: keyword arguments of :func:`~medrobust.callbacks.evaluation.reporting.report`."""
        return {}

    # ------------------------------------------------------------------------------------------- the skeleton
    @property
    def report(self) -> dict[str, Any] | None:
        """The last test's JSON report (also where no logger is attached)."""
        return self._report

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report = None
        self._ids.reset()
        self.splits = list(getattr(trainer.datamodule, "test_split_names", None) or ["id"])
        self.start(trainer, pl_module)

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        ids = self._ids.take(trainer, "test", dataloader_idx, len(batch[0]))
        # a datamodule names its test splits; loaders given to trainer.test directly are test_<k> after the first
        split = self.splits[dataloader_idx] if dataloader_idx < len(self.splits) else f"test_{dataloader_idx}"
        self.evaluate(
            trainer, pl_module, TestBatch(split, batch[0], batch[1], tuple(batch[2:]), ids, outputs, batch_idx)
        )

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report = self.finish(trainer, pl_module)

    @override
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._report is not None and trainer.loggers:
            report(trainer, **self.artifacts(trainer, self._report), config_key=f"callbacks.{type(self).__name__}")
