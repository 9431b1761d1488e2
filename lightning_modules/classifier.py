"""ClassifierModule: a timm classifier with normalisation inside, task-aware loss and metrics, and training seams."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from typing_extensions import override

from medrobust.lightning_modules.features.feature_taps import capture
from medrobust.lightning_modules.losses import task_loss
from medrobust.lightning_modules.metrics.confusion import CONSTANT_SHARE, near_constant, top_prediction_share
from medrobust.lightning_modules.metrics.metric_names import metric_name
from medrobust.lightning_modules.metrics.task_metrics import ConfusionCounts, classification_metrics
from medrobust.lightning_modules.nets.independent_init import ancestors_of, derived_seed, fingerprint, redraw
from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier
from medrobust.lightning_modules.training_seams import Batch, TrainingSeams, TrainingStep, TrainingThreat
from medrobust.utilities.console import own_line
from medrobust.utilities.errors import InputError
from medrobust.utilities.seeds import run_seed

__all__ = ["ClassifierModule", "TrainingStep", "TrainingThreat"]

log = logging.getLogger(__name__)


class ClassifierModule(TrainingSeams, LightningModule):
    """Image classifier for MedMNIST tasks; images in [0, 1], so every attack budget is in pixel units.

    Seams for callbacks (:mod:`medrobust.lightning_modules.training_seams` documents their order within a step;
    register in ``setup``, remove in ``teardown``; names are unique):

    * :meth:`add_input_transform` -- ``fn(x, y) -> (x', y')`` replaces or augments the training batch before the
      forward pass (adversarial training: PGD-AT swaps in ``x_adv``; a mix ratio concatenates clean and adversarial).
      ``y'`` may be class indices, or soft labels: per-class probabilities ``(N, C)`` (MixUp, CutMix, label
      smoothing), which cross-entropy takes as they are and the training metrics read by their argmax.
    * :meth:`add_loss_term` -- ``fn(step: TrainingStep) -> scalar`` adds a named term to the task loss (TRADES adds
      ``beta * KL(f(x) || f(x'))``; feature distillation adds per-layer terms), logged as ``train/loss/<name>``
      beside ``train/loss/task`` and the total ``train/loss``.
    * :meth:`request_features` -- named intermediate features of the training forward in ``step.features``.
    * :meth:`add_auxiliary_module` -- a loss term's trainable module (adapter, probe), in its own parameter group.
    * :meth:`set_training_threat` -- a callback that trains against a threat model announces it here
      (:class:`TrainingThreat`); :class:`~medrobust.callbacks.RobustValidation` attacks validation at that budget and
      :class:`~medrobust.callbacks.SelectionCheckpoint` skips the epochs of its warm-up.

    Args:
        model_name: any timm model name, e.g. ``"resnet18"``.
        num_classes: number of classes (labels, for multi-label tasks). Linked from the datamodule by the CLI.
        in_chans: input channels. Linked from the datamodule by the CLI.
        task: ``"multiclass"`` (cross-entropy) or ``"multilabel"`` (BCE with logits). Linked from the datamodule.
        pretrained: load timm's pretrained weights (needs network or a local cache). Loading a checkpoint never
            fetches them again: the checkpoint holds the weights.
        mean: per-channel mean of the Normalize layer (pixel units); default: the pretrained weights' own (a grey
            image gets the mean over their channels), else 0.5. The resolved values are saved with the model.
        std: per-channel std of the Normalize layer; default as for ``mean``.
        optimizer: optimizer factory, ``torch.optim.Adam`` (lr 1e-3) by default.
        lr_scheduler: optional scheduler factory, stepped every epoch.
        timm_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_rate``).
        class_weights: weight the training loss against class imbalance: ``"balanced"`` (scikit-learn's
            ``n / (C * n_c)`` from the training split's labels; for multi-label tasks BCE's ``pos_weight`` of
            negatives / positives per label) or one weight per class. Validation and test losses stay unweighted,
            so they compare across runs. The weights in effect are recorded in the run (tag ``train.class_weights``).
        small_input: adapt the network to 28-64 px images as the small-image literature does
            (:mod:`~medrobust.lightning_modules.nets.small_input`): ResNets get the CIFAR stem (3x3 stride-1 conv, no
            max-pool), ConvNeXt a 3x3 stride-1 stem, EfficientNet a stride-1 stem, ViT a patch size giving a 7x7+
            token grid. ``feature_info`` follows. Other families are refused, naming the supported ones.
        input_size: the image side; linked from ``data.size`` by the CLI (a ViT with ``small_input`` needs it).
        channels_last: keep the network's weights and activations in channels-last memory format, which
            oneDNN's (CPU) and cuDNN's bf16 convolutions run fastest in. Pair it with ``trainer.precision:
            bf16-mixed`` for the fast path (:doc:`README` "Fast path"); attacks during training and the evaluation
            callbacks run inside the same precision context, so adversarial training and robustness numbers inherit
            both.
        compile: ``torch.compile`` the backbone's forward in place (``True``, or a dict of ``torch.compile``
            arguments such as ``{mode: max-autotune}``); module names, feature taps and checkpoints are unchanged.
            The first steps pay the compilation.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 2,
        in_chans: int = 1,
        task: str = "multiclass",
        pretrained: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        timm_kwargs: dict | None = None,
        class_weights: Literal["balanced"] | list[float] | None = None,
        small_input: bool = False,
        input_size: int | None = None,
        channels_last: bool = False,
        compile: bool | dict = False,
    ) -> None:
        super().__init__()
        # Factories are not data: keeping them out makes checkpoints load with weights_only=True. Under the CLI the
        # full config, optimizer included, is saved with the run.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if isinstance(class_weights, list) and len(class_weights) != num_classes:
            raise InputError(f"class_weights has {len(class_weights)} values for {num_classes} classes")
        self.task = task
        self.num_classes = num_classes
        self.net = NormalizedClassifier.from_timm(
            model_name, num_classes, in_chans, pretrained, mean, std, small_input, input_size, **(timm_kwargs or {})
        )
        if channels_last:
            self.net.use_channels_last()
        if compile:
            self.net.backbone.compile(**(compile if isinstance(compile, dict) else {}))
        # What the Normalize layer resolved to, so that a loaded checkpoint rebuilds the same model.
        self.hparams["mean"], self.hparams["std"] = self.net.normalize.values()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.class_weight: torch.Tensor | None = None
        self.train_metrics = classification_metrics(task, num_classes, full=False)
        self.val_metrics = classification_metrics(task, num_classes)
        self.test_metrics = classification_metrics(task, num_classes)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_confusion = ConfusionCounts(task, num_classes)
        self.last_test_confusion: torch.Tensor | None = None
        #: the share of the last test's predictions given to the most predicted class (1.0: a constant classifier)
        self.last_test_top_share: float | None = None
        self._init_seams()
        #: a few values of every parameter at construction: the independent init redraws only weights still initial
        self._initial_fingerprint = fingerprint(self.net)
        self._redrawn = False

    # ------------------------------------------------------------------------------------------- the model
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> ClassifierModule:
        """Lightning's loader, without fetching pretrained weights again: the checkpoint holds the weights."""
        kwargs.setdefault("pretrained", False)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._independent_init()
        weights = self.hparams.get("class_weights")
        if stage == "fit" and weights is not None:
            self.class_weight = self._class_weight(weights).to(self.device)

    def _independent_init(self) -> None:
        """Draw the network again when the run derives from another model (a teacher, a constructed dataset's
        source): :mod:`~medrobust.lightning_modules.nets.independent_init`. A resumed fit restores its checkpoint's
        weights over these afterwards."""
        trainer = self._trainer
        if trainer is None:
            return
        ancestors = ancestors_of([*trainer.callbacks, trainer.datamodule])
        if not ancestors or self._redrawn:
            return
        if trainer.ckpt_path is not None or not torch.equal(fingerprint(self.net), self._initial_fingerprint):
            # resumed, or weights loaded or trained since construction: those are what this fit goes on from
            log.info("independent init skipped: the network's weights are no longer its initial ones")
            return
        seed = derived_seed(run_seed(), ancestors)
        redraw(self.net, self.hparams, seed)
        self._redrawn = True
        for logger in self.loggers:  # MLflowRunLogger's log_params: hyperparameters come from the config there
            getattr(logger, "log_params", logger.log_hyperparams)(
                {"init.seed": seed, "init.independent_of": ",".join(ancestors)}
            )

    def _class_weight(self, weights: str | list[float]) -> torch.Tensor:
        if weights != "balanced":
            return torch.tensor(weights, dtype=torch.float32)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "label_counts"):
            raise InputError("class_weights='balanced' needs a datamodule with label_counts() (MedMNISTDataModule)")
        counts, n = datamodule.label_counts("train")
        if self.task == "multilabel":  # BCE's pos_weight: negatives per positive, for each label
            return ((n - counts) / counts.clamp_min(1)).float()
        present = counts > 0
        return torch.where(present, n / (present.sum() * counts.clamp_min(1)), torch.ones_like(counts)).float()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return task_loss(logits, y, self.task, weight=weight)

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x_clean, y_clean = batch
        x, y = x_clean, y_clean
        for transform in self._input_transforms.values():
            x, y = transform(x, y)
        hard = self._hard_labels(y, len(x))  # checks soft labels before the loss sees them
        if self.needs_input_grad:
            x = x.detach().requires_grad_(True)
        features: dict[str, torch.Tensor] = {}
        layers = self.requested_features
        if layers:  # hooks only for this one forward: attacks, TRADES' extra forward and evaluation are not tapped
            with capture(self.net.backbone, layers) as features:
                logits = self.net(x)
        else:
            logits = self.net(x)
        loss = task = self.task_loss(logits, y, self.class_weight)
        if self._loss_terms:
            step = TrainingStep(x, y, logits, x_clean, y_clean, task, features)
            terms = {name: fn(step) for name, fn in self._loss_terms.items()}
            loss = task + sum(terms.values())
            terms["task"] = task
            losses = {metric_name("train", "loss", k): v.detach() for k, v in terms.items()}
            self.log_dict(losses, on_epoch=True, sync_dist=True)
        self.train_metrics.update(logits.detach(), hard)
        # sync_dist: under DDP the logged loss is the mean over ranks, not rank 0's share.
        self.log(metric_name("train", "loss"), loss.detach(), prog_bar=True, on_epoch=True, sync_dist=True)
        self.log_dict({metric_name("train", k): m for k, m in self.train_metrics.items()}, on_epoch=True)
        return loss

    def _hard_labels(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """The labels the training metrics read: class indices as given, or the argmax of soft labels (per-class
        probabilities ``(N, C)`` from MixUp, CutMix or label smoothing; the loss takes them as they are); for a
        multi-label task, soft targets rounded at 0.5."""
        if self.task == "multilabel":
            return (y >= 0.5).long() if y.is_floating_point() else y
        if not y.is_floating_point():
            return y
        if y.shape != (n, self.num_classes):
            raise InputError(
                f"An input transform returned float labels of shape {tuple(y.shape)}: soft labels must be per-class "
                f"probabilities of shape ({n}, {self.num_classes}); class indices must stay integers"
            )
        return y.argmax(1)

    def _evaluate(self, stage: str, batch: Batch) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        (self.val_metrics if stage == "val" else self.test_metrics).update(logits, y)
        (self.val_loss if stage == "val" else self.test_loss).update(self.task_loss(logits, y), weight=len(x))
        if stage == "test":
            self.test_confusion.update(logits, y)
        return logits

    def _log_epoch(self, stage: str) -> None:
        """Log the stage's metrics once per epoch, reduced over every process.

        Metrics are computed here, not logged per step: under DDP a process whose share of a small split is empty
        runs no step, yet takes part in these reductions, so no process waits for one that never comes.
        """
        metrics, loss = (self.val_metrics, self.val_loss) if stage == "val" else (self.test_metrics, self.test_loss)
        values = {metric_name(stage, k): v for k, v in metrics.compute().items()}
        values[metric_name(stage, "loss")] = loss.compute()
        self.log_dict(values, sync_dist=True, prog_bar=stage == "val")  # identical on every rank already
        metrics.reset()
        loss.reset()

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    @override
    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Loader 0 is the in-distribution test split and feeds ``test/*``; further loaders (shifted or
        out-of-distribution splits) are only forwarded, and callbacks such as ShiftEvaluation read the logits."""
        if dataloader_idx == 0:
            return self._evaluate("test", batch)
        return self.net(batch[0])

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self.last_test_confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()
        self.last_test_top_share = top_prediction_share(self.last_test_confusion)

    @override
    def on_test_end(self) -> None:
        """After every test (the progress bar closed): a warning on its own line when one class gets at least
        :data:`~medrobust.lightning_modules.metrics.confusion.CONSTANT_SHARE` of the predictions, more than it has of
        the labels (:func:`~medrobust.lightning_modules.metrics.confusion.near_constant`; single-label tasks);
        accuracy, robust accuracy included, then measures the test set's class balance. The run records it (tag
        ``test.near_constant``)."""
        share, counts = self.last_test_top_share, self.last_test_confusion
        if counts is not None and near_constant(counts) and self.trainer.is_global_zero:
            own_line(
                f"medrobust: warning: near-constant predictions: one class gets {share:.0%} of the test predictions "
                f"(>= {CONSTANT_SHARE:.0%}, more than that class has of the labels); accuracy here measures the class "
                "balance of the test set. Train longer "
                "or weight the classes (--model.class_weights balanced).",
                sys.stderr,
            )

    @override
    def configure_optimizers(self):
        groups = self.parameter_groups()
        optimizer = self.optimizer_factory(groups if len(groups) > 1 else groups[0]["params"])
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    @override
    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._optimizer_built = False
