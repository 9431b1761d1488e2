"""What the evaluation callbacks share: the :class:`EvaluationCallback` skeleton, :class:`TestBatch`, the global
sample budget (:func:`within`), the reporting seam, gathered rows and minimal-distance bookkeeping."""

from medrobust.callbacks.evaluation.evaluation_callback import EvaluationCallback
from medrobust.callbacks.evaluation.sample_ids import within
from medrobust.callbacks.evaluation.test_batch import TestBatch

__all__ = ["EvaluationCallback", "TestBatch", "within"]
