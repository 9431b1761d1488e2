"""ShiftEvaluation: accuracy, balanced accuracy and AUC on every shifted test split, with MedMNIST-C's BE and rBE."""

from __future__ import annotations

import logging
import statistics
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from medrobust.callbacks.evaluation.evaluation_callback import EvaluationCallback, TestBatch
from medrobust.callbacks.evaluation.outputs import auroc, gather_rows
from medrobust.callbacks.helpers.figures import corruption_examples, shift_heatmap
from medrobust.datamodules.corruptions import ALEXNET_BASELINE
from medrobust.lightning_modules.metrics.confusion import accuracy, balanced_accuracy, confusion_counts, empty_counts
from medrobust.lightning_modules.metrics.metric_names import build_name, metric_name
from medrobust.lightning_modules.metrics.task_metrics import scores
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)


class ShiftEvaluation(EvaluationCallback):
    """Evaluate the shifted test splits a datamodule serves after its in-distribution one.

    Needs a datamodule with ``test_split_names`` (:class:`MedMNISTDataModule` with ``shifts``). Logs, per split,
    ``test/<split>/{acc,bal_acc,auroc}`` (e.g. ``test/shift/gaussian_noise/s3/bal_acc``,
    ``test/shift/resolution_64/auroc``); per corruption the mean over severities
    (``test/shift/<corruption>/mean/bal_acc``) and MedMNIST-C's balanced error normalised by AlexNet
    (``test/shift/<corruption>/be``, ``/rbe``, and their means ``test/shift/be``, ``test/shift/rbe``); the mean shifted
    balanced accuracy ``test/shift/mean/bal_acc``. Also ``shift.json``, ``plots/shift_heatmap.png`` (corruption x
    severity) and ``plots/shift_examples.png`` (the first test image under each corruption at severities 1, 3, 5).
    OOD splits (``ood/...``) have no labels for this task and are left to detection callbacks.

    BE of a corruption is its balanced error averaged over severities divided by AlexNet's; rBE subtracts the clean
    balanced error from both first (Di Salvo et al. 2024). Both are reported where MedMNIST-C publishes the baseline.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, torch.Tensor] = {}
        self._scores: dict[str, list[torch.Tensor]] = {}
        self._labels: dict[str, list[torch.Tensor]] = {}

    @override
    def start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(trainer.datamodule, "test_split_names", None) is None:
            raise InputError(
                "ShiftEvaluation needs a datamodule with test_split_names (MedMNISTDataModule(shifts=...))"
            )
        self._counts, self._scores, self._labels = {}, {}, {}
        c, task = pl_module.num_classes, pl_module.task
        for split in (name for name in self.splits if name == "id" or name.startswith("shift/")):
            self._counts[split] = empty_counts(task, c)
            self._scores[split] = [torch.zeros(0, c)]
            self._labels[split] = [torch.zeros((0, c) if task == "multilabel" else (0,), dtype=torch.long)]

    @override
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, batch: TestBatch) -> None:
        split = batch.split
        if split not in self._counts or batch.outputs is None:
            return
        logits, y = batch.outputs.detach(), batch.y
        self._counts[split] += confusion_counts(logits, y, pl_module.task, pl_module.num_classes).cpu()
        self._scores[split].append(scores(pl_module.task, logits).float().cpu())
        self._labels[split].append(y.long().cpu())

    @override
    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any] | None:
        if not any(name.startswith("shift/") for name in self._counts):
            return None
        splits = {}
        for split in self._counts:
            counts = trainer.strategy.reduce(self._counts[split].to(pl_module.device), reduce_op="sum").cpu()
            probs = gather_rows(trainer, torch.cat(self._scores[split]), pl_module.device)
            labels = gather_rows(trainer, torch.cat(self._labels[split]), pl_module.device)
            splits[split] = {
                "acc": accuracy(counts),
                "bal_acc": float(balanced_accuracy(counts)),
                "auroc": auroc(probs, labels, pl_module.task, pl_module.num_classes),
                "n": len(labels),
            }
        report = self._summarise(splits, trainer.datamodule.spec.flag)
        for name, value in report["metrics"].items():
            pl_module.log(name, value, sync_dist=False, add_dataloader_idx=False)
        return report

    def _summarise(self, splits: dict[str, dict], flag: str) -> dict[str, Any]:
        metrics: dict[str, float] = {}
        for split, values in splits.items():
            if split != "id":
                metrics |= {metric_name("test", split, k): v for k, v in values.items() if k != "n"}
        corruptions: dict[str, dict[str, Any]] = {}
        for split, values in splits.items():
            parts = split.split("/")
            if len(parts) == 3 and parts[0] == "shift":
                entry = corruptions.setdefault(parts[1], {"severities": {}})
                entry["severities"][int(parts[2][1:])] = values
        clean_error = 1 - splits["id"]["bal_acc"] if "id" in splits else None
        baseline = ALEXNET_BASELINE.get(flag)
        for name, entry in corruptions.items():
            severities = entry["severities"].values()
            entry["mean_bal_acc"] = statistics.mean(v["bal_acc"] for v in severities)
            entry["mean_auroc"] = statistics.mean(v["auroc"] for v in severities)
            metrics[build_name("shift_corruption_mean", corruption=name, stat="bal_acc")] = entry["mean_bal_acc"]
            metrics[build_name("shift_corruption_mean", corruption=name, stat="auroc")] = entry["mean_auroc"]
            if baseline and name in baseline[1] and clean_error is not None and len(entry["severities"]) == 5:
                error = 1 - entry["mean_bal_acc"]
                entry["be"] = error / baseline[1][name]
                entry["rbe"] = (error - clean_error) / (baseline[1][name] - baseline[0])
                metrics[metric_name("test", "shift", name, "be")] = entry["be"]
                metrics[metric_name("test", "shift", name, "rbe")] = entry["rbe"]
        if corruptions:
            metrics[metric_name("test", "shift", "mean", "bal_acc")] = statistics.mean(
                e["mean_bal_acc"] for e in corruptions.values()
            )
        for key in ("be", "rbe"):
            values = [e[key] for e in corruptions.values() if key in e]
            if values:
                metrics[metric_name("test", "shift", key)] = statistics.mean(values)
        return {
            "flag": flag,
            "clean": splits.get("id"),
            "corruptions": corruptions,
            "other": {k: v for k, v in splits.items() if k != "id" and k.count("/") == 1},
            "alexnet_baseline": {"clean_error": baseline[0], "errors": baseline[1]} if baseline else None,
            "metrics": metrics,
        }

    @override
    def artifacts(self, trainer: Trainer, report: dict[str, Any]) -> dict[str, Any]:
        figures = {}
        if report["corruptions"]:
            figures["plots/shift_heatmap.png"] = shift_heatmap(report)
            datamodule = trainer.datamodule
            examples = {"clean": datamodule.datasets["test"].images[0].numpy()}
            for split, dataset in getattr(datamodule, "shifted", {}).items():
                if split.startswith("shift/") and split.count("/") == 2:
                    examples[split.removeprefix("shift/")] = dataset.images[0].numpy()
            figures["plots/shift_examples.png"] = corruption_examples(examples)
        return {"json_files": {"shift.json": report}, "figures": figures}
