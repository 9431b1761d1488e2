"""ShortcutEvaluation: AUROC, balanced accuracy and the bias gap on the shortcut test splits."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from medrobust.callbacks.evaluation.evaluation_callback import EvaluationCallback, TestBatch
from medrobust.callbacks.evaluation.outputs import auroc, gather_rows
from medrobust.lightning_modules.metrics.confusion import accuracy, balanced_accuracy, confusion_from_predictions
from medrobust.lightning_modules.metrics.group_gaps import group_gaps
from medrobust.lightning_modules.metrics.metric_names import build_name
from medrobust.lightning_modules.metrics.task_metrics import scores
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.utilities.errors import InputError

#: what is logged of a distillation teacher scored on the same splits (``teacher_<stat>``)
TEACHER_STATS = ("auroc", "bal_acc", "acc", "dtpr", "dfpr", "eo_gap", "dtpr_small_group", "eo_gap_small_group")


class ShortcutEvaluation(EvaluationCallback):
    """Evaluate the ``shortcut/aligned``, ``shortcut/flipped`` and ``shortcut/absent`` test splits.

    Needs a :class:`~medrobust.datamodules.medmnist.MedMNISTDataModule` with ``shortcut``; its shortcut splits' batches
    carry per-sample group labels (1: the sample carries the feature). Logs per split
    ``test/shortcut/<split>/<metric>``: ``auroc``, ``bal_acc``, ``acc``, ``tpr_carrier`` and ``tpr_clean`` (the
    true-positive rate of the shortcut's target class among samples with and without the feature), ``fpr_carrier``
    and ``fpr_clean``, the bias gaps ``dtpr`` = ``tpr_carrier - tpr_clean``, ``dfpr`` and the equalised-odds gap
    ``eo_gap`` = max(|dtpr|, |dfpr|), each with a bootstrap 95% interval (``<gap>_lo``, ``<gap>_hi``), the group sizes
    (``n_pos_carrier``, ...) and ``<gap>_small_group`` (1 where a gap rests on fewer than 30 samples:
    :mod:`~medrobust.lightning_modules.metrics.group_gaps`); gaps need both groups, so ``absent`` (where nobody
    carries the feature) has none. ``summary/*`` gets ``shortcut_auroc/<split>``, ``shortcut_bal_acc/<split>``,
    ``shortcut_dtpr/<split>`` and ``shortcut_eo_gap/<split>``, the gaps only where no group is small. Where a
    callback offers a teacher (``scoring_teacher()``: :class:`~medrobust.callbacks.FeatureDistillation`), the teacher
    is scored on the same images, ``teacher_<stat>`` (:data:`TEACHER_STATS`), so a student's gap reads beside the
    one it was distilled from. Also
    ``shortcut.json`` and ``plots/shortcut_examples.png``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, dict[str, list[torch.Tensor]]] = {}

    @override
    def start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "shortcut", None) is None:
            raise InputError("ShortcutEvaluation needs a datamodule with a shortcut (--data.shortcut)")
        self._target = datamodule.shortcut.target_class
        c = pl_module.num_classes
        # Every split starts with an empty row on every rank, so a rank without batches still joins the gathers.
        empty = {"scores": torch.zeros(0, c), "labels": torch.zeros(0, dtype=torch.long)}
        empty["groups"] = torch.zeros(0, dtype=torch.long)
        # a distillation teacher, scored on the same images (issue 25.15): is the student's gap the teacher's?
        self._teacher = next(
            (t for cb in trainer.callbacks if (t := getattr(cb, "scoring_teacher", lambda: None)()) is not None), None
        )
        if self._teacher is not None:
            empty["teacher"] = torch.zeros(0, c)
        self._rows = {n: {k: [v] for k, v in empty.items()} for n in self.splits if n.startswith("shortcut/")}

    @override
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, batch: TestBatch) -> None:
        rows = self._rows.get(batch.split)
        if rows is None or batch.outputs is None:
            return
        rows["scores"].append(scores(pl_module.task, batch.outputs.detach()).float().cpu())
        rows["labels"].append(batch.y.long().cpu())
        rows["groups"].append(batch.extra[0].long().cpu())
        if self._teacher is not None:
            with torch.no_grad(), eval_mode(self._teacher):
                logits = self._teacher(batch.x.to(pl_module.device))
            rows["teacher"].append(scores(pl_module.task, logits).float().cpu())

    @override
    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any] | None:
        if not self._rows:
            return None
        c, splits = pl_module.num_classes, {}
        for split, rows in self._rows.items():
            gathered = {k: gather_rows(trainer, torch.cat(v), pl_module.device) for k, v in rows.items()}
            labels, groups = gathered["labels"], gathered["groups"]
            splits[split] = shortcut_metrics(gathered["scores"], labels, groups, self._target, c)
            if "teacher" in gathered:
                teacher = shortcut_metrics(gathered["teacher"], labels, groups, self._target, c)
                splits[split] |= {f"teacher_{k}": teacher[k] for k in TEACHER_STATS}
        metrics = {
            build_name("shortcut", split=split.removeprefix("shortcut/"), stat=key): value
            for split, values in splits.items()
            for key, value in values.items()
            if key != "n" and not math.isnan(value)
        }
        for name, value in metrics.items():
            pl_module.log(name, value, sync_dist=False, add_dataloader_idx=False)
        return {"target_class": self._target, "splits": splits}

    @override
    def artifacts(self, trainer: Trainer, report: dict[str, Any]) -> dict[str, Any]:
        figures = {"plots/shortcut_examples.png": shortcut_examples(trainer.datamodule.shifted)}
        return {"json_files": {"shortcut.json": report}, "figures": figures}


def shortcut_metrics(
    probs: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, target: int, num_classes: int
) -> dict[str, float]:
    """AUROC, accuracies, and the target class's group gaps between samples with and without the feature
    (:func:`~medrobust.lightning_modules.metrics.group_gaps.group_gaps`: TPR and FPR per group, ``dtpr``, ``dfpr``,
    the equalised-odds gap, bootstrap intervals, group sizes; NaN where undefined)."""
    pred = probs.argmax(1)
    counts = confusion_from_predictions(pred, labels, "multiclass", num_classes)
    both = len(labels.unique()) > 1
    return {
        "auroc": auroc(probs, labels, "multiclass", num_classes) if both else math.nan,
        "bal_acc": float(balanced_accuracy(counts)),
        "acc": accuracy(counts),
        **group_gaps(pred, labels, groups, target),
        "carrier_share": float(groups.float().mean()) if len(groups) else math.nan,
        "n": len(labels),
    }


def shortcut_examples(shifted: dict[str, Any], per_group: int = 4) -> plt.Figure:
    """The first images with and without the feature, from the aligned split (or the first shortcut split)."""
    name = (
        "shortcut/aligned" if "shortcut/aligned" in shifted else next(k for k in shifted if k.startswith("shortcut/"))
    )
    dataset = shifted[name]
    fig, axes = plt.subplots(2, per_group, figsize=(1.6 * per_group, 3.6), squeeze=False)
    for row, carries in enumerate((1, 0)):
        index = (dataset.groups == carries).nonzero().flatten()[:per_group]
        for col in range(per_group):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(index):
                image = dataset.images[index[col]].permute(1, 2, 0).squeeze(-1).numpy()
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
                ax.set_title(f"y={int(dataset.labels[index[col]])}, {'carrier' if carries else 'clean'}", fontsize=8)
    fig.suptitle(name)
    fig.tight_layout()
    return fig
