"""ClassifierModule: a timm classifier with normalisation inside, task-aware loss and metrics, and training seams."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from lightning_modules.components.metric_names import metric_name
from lightning_modules.components.metrics import classification_metrics, confusion_matrix, scores
from lightning_modules.components.normalized_classifier import NormalizedClassifier

Batch = tuple[torch.Tensor, torch.Tensor]
InputTransform = Callable[[torch.Tensor, torch.Tensor], Batch]


@dataclass
class TrainingStep:
    """What a loss term sees of one training step.

    Attributes:
        x: the input the network was trained on (after every input transform).
        y: its targets.
        logits: ``net(x)``, with the graph attached.
        x_clean: the batch as the loader served it.
        y_clean: its targets.
    """

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    x_clean: torch.Tensor
    y_clean: torch.Tensor


LossTerm = Callable[[TrainingStep], torch.Tensor]


class ClassifierModule(LightningModule):
    """Image classifier for MedMNIST tasks; images in [0, 1], so every attack budget is in pixel units.

    Seams for callbacks (register in ``setup``, remove in ``teardown``; names are unique, order is registration
    order):

    * :meth:`add_input_transform` -- ``fn(x, y) -> (x', y')`` replaces or augments the training batch before the
      forward pass (adversarial training: PGD-AT swaps in ``x_adv``; a mix ratio concatenates clean and adversarial).
    * :meth:`add_loss_term` -- ``fn(step: TrainingStep) -> scalar`` adds a named term to the task loss (TRADES adds
      ``beta * KL(f(x) || f(x'))``; feature distillation adds per-layer matching terms read from feature taps).

    Each term is logged as ``train/loss/<name>`` beside ``train/loss/task`` and the total ``train/loss``.

    Args:
        model_name: any timm model name, e.g. ``"resnet18"``.
        num_classes: number of classes (labels, for multi-label tasks). Linked from the datamodule by the CLI.
        in_chans: input channels. Linked from the datamodule by the CLI.
        task: ``"multiclass"`` (cross-entropy) or ``"multilabel"`` (BCE with logits). Linked from the datamodule.
        pretrained: load timm's pretrained weights (needs network or a local cache).
        mean: per-channel mean of the Normalize layer (pixel units).
        std: per-channel std of the Normalize layer.
        optimizer: optimizer factory, ``torch.optim.Adam`` (lr 1e-3) by default.
        lr_scheduler: optional scheduler factory, stepped every epoch.
        timm_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_rate``).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 2,
        in_chans: int = 1,
        task: str = "multiclass",
        pretrained: bool = False,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        timm_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        # Factories are not data: keeping them out makes checkpoints load with weights_only=True. Under the CLI the
        # full config, optimizer included, is saved with the run.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.task = task
        self.num_classes = num_classes
        self.net = NormalizedClassifier.from_timm(
            model_name, num_classes, in_chans, pretrained, mean, std, **(timm_kwargs or {})
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_metrics = classification_metrics(task, num_classes, full=False)
        self.val_metrics = classification_metrics(task, num_classes)
        self.test_metrics = classification_metrics(task, num_classes)
        self.test_confusion = confusion_matrix(task, num_classes)
        self.last_test_confusion: torch.Tensor | None = None
        self._input_transforms: dict[str, InputTransform] = {}
        self._loss_terms: dict[str, LossTerm] = {}

    # ----------------------------------------------------------------------------------------------- seams
    def add_input_transform(self, name: str, fn: InputTransform) -> None:
        """Register ``fn(x, y) -> (x', y')``, applied to every training batch before the forward pass."""
        _add_unique(self._input_transforms, name, fn, "input transform")

    def remove_input_transform(self, name: str) -> None:
        self._input_transforms.pop(name, None)

    def add_loss_term(self, name: str, fn: LossTerm) -> None:
        """Register ``fn(step) -> scalar``, added to the task loss and logged as ``train/loss/<name>``."""
        if name == "task":
            raise ValueError("'task' is the name of the task loss itself; choose another loss-term name")
        metric_name("train", "loss", name)  # the name must survive MLflow
        _add_unique(self._loss_terms, name, fn, "loss term")

    def remove_loss_term(self, name: str) -> None:
        self._loss_terms.pop(name, None)

    @property
    def input_transforms(self) -> tuple[str, ...]:
        return tuple(self._input_transforms)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return tuple(self._loss_terms)

    # ------------------------------------------------------------------------------------------- the model
    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y.float())
        return F.cross_entropy(logits, y)

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x_clean, y_clean = batch
        x, y = x_clean, y_clean
        for transform in self._input_transforms.values():
            x, y = transform(x, y)
        logits = self.net(x)
        loss = task = self.task_loss(logits, y)
        if self._loss_terms:
            step = TrainingStep(x, y, logits, x_clean, y_clean)
            terms = {name: fn(step) for name, fn in self._loss_terms.items()}
            loss = task + sum(terms.values())
            terms["task"] = task
            losses = {metric_name("train", "loss", k): v.detach() for k, v in terms.items()}
            self.log_dict(losses, on_epoch=True, sync_dist=True)
        self.train_metrics.update(scores(self.task, logits.detach()), y.long())
        # sync_dist: under DDP the logged loss is the mean over ranks, not rank 0's share.
        self.log(metric_name("train", "loss"), loss.detach(), prog_bar=True, on_epoch=True, sync_dist=True)
        self.log_dict({metric_name("train", k): m for k, m in self.train_metrics.items()}, on_epoch=True)
        return loss

    def _evaluate(self, stage: str, batch: Batch) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        probs = scores(self.task, logits)
        metrics.update(probs, y.long())
        if stage == "test":
            self.test_confusion.update(probs, y.long())
        log = {"sync_dist": True, "prog_bar": stage == "val", "add_dataloader_idx": False}
        self.log(metric_name(stage, "loss"), self.task_loss(logits, y), **log)
        self.log_dict({metric_name(stage, k): m for k, m in metrics.items()}, **log)
        return logits

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    @override
    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Loader 0 is the in-distribution test split and feeds ``test/*``; further loaders (shifted or
        out-of-distribution splits) are only forwarded, and callbacks such as ShiftEvaluation read the logits."""
        if dataloader_idx == 0:
            return self._evaluate("test", batch)
        return self.net(batch[0])

    @override
    def on_test_epoch_end(self) -> None:
        self.last_test_confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}


def _add_unique(registry: dict, name: str, fn: Callable, kind: str) -> None:
    if name in registry:
        raise ValueError(f"A {kind} named {name!r} is already registered; registered: {sorted(registry)}")
    registry[name] = fn
