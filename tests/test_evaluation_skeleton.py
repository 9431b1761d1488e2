"""The evaluation skeleton: global sample ids from the loader's own order, the budget they admit, and split names."""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, TensorDataset

from medrobust.callbacks.evaluation import EvaluationCallback, within
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.utilities.errors import InputError


class Record(EvaluationCallback):
    """Keeps what the skeleton hands each batch."""

    def start(self, trainer, pl_module) -> None:
        self.seen: list[tuple[str, list[int] | None, int]] = []

    def evaluate(self, trainer, pl_module, batch) -> None:
        ids = batch.ids.tolist() if batch.ids is not None else None
        self.seen.append((batch.split, ids, len(batch.x)))

    def finish(self, trainer, pl_module) -> dict:
        return {"batches": len(self.seen)}


def _data(n: int) -> TensorDataset:
    return TensorDataset(torch.rand(n, 1, 28, 28), torch.arange(n) % 2)


def _test(tmp_path, *loaders: DataLoader) -> Record:
    model = ClassifierModule("test_resnet", 2, 1, "multiclass")
    record = Record()
    quiet_trainer(tmp_path, callbacks=[record]).test(model, dataloaders=list(loaders), verbose=False)
    return record


def test_ids_follow_the_loaders_own_order(tmp_path) -> None:
    """Process 1 of 2 under an unpadded distributed sampler holds samples 1, 3, 5, ...: the ids say so, whatever the
    batch size; a second loader given without a datamodule is split ``test_1``."""
    data = _data(11)
    second = DataLoader(data, batch_size=3, sampler=UnrepeatedDistributedSampler(data, 2, 1, shuffle=False))
    record = _test(tmp_path, DataLoader(data, batch_size=4), second)
    first = [ids for split, ids, _ in record.seen if split == "id"]
    assert first == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [ids for split, ids, _ in record.seen if split == "test_1"] == [[1, 3, 5], [7, 9]]
    assert record.report == {"batches": 5}


def test_a_shuffling_loader_has_no_ids_and_refuses_only_a_budget(tmp_path) -> None:
    record = _test(tmp_path, DataLoader(_data(6), batch_size=4, shuffle=True))
    assert [(ids, n) for _, ids, n in record.seen] == [(None, 4), (None, 2)]
    assert within(None, None, 4) == 4
    with pytest.raises(InputError, match="fixed order"):
        within(None, 3, 4)


def test_the_budget_admits_the_first_samples_by_index() -> None:
    assert within(torch.tensor([1, 3, 5, 7]), 6) == 3 and within(torch.tensor([9, 11]), 6) == 0
    assert within(torch.tensor([1, 3]), None) == 2
    with pytest.raises(InputError, match="not the first of their batch"):
        within(torch.tensor([9, 0]), 5)  # a padding sampler repeats sample 0 at the end
