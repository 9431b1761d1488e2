"""RobustValidation: accuracy under PGD at the training budget on the validation split, every epoch of a fit."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from medrobust.callbacks.evaluation.sample_ids import SampleIds, within
from medrobust.callbacks.helpers.image_shape import image_shape
from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat import Threat, check_budget
from medrobust.lightning_modules.losses import attack_loss
from medrobust.lightning_modules.metrics.confusion import accuracy, balanced_accuracy, confusion_counts, empty_counts
from medrobust.lightning_modules.metrics.metric_names import metric_name
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.utilities.errors import InputError


class RobustValidation(Callback):
    """Attack validation images with PGD and log ``val/robust/acc`` and ``val/robust/bal_acc``, the numbers the
    ``robust_acc`` and ``robust_bal_acc`` selection rules of :class:`~medrobust.callbacks.SelectionCheckpoint` rank
    epochs by.

    The budget is the training budget the module announces
    (:class:`~medrobust.lightning_modules.classifier.TrainingThreat`,
    set by :class:`~medrobust.callbacks.AdversarialTraining`) at its full eps, warm-up or not, unless ``eps`` and
    ``norm`` are given. Without either (standard training), the budget is 0 and the numbers are clean validation
    accuracies, so an eps sweep's baseline is selected by the same rule as its other points. PGD starts at the clean
    image, so the numbers are deterministic. ``val/robust/eps`` records the budget. Counts are summed over processes
    exactly.

    Args:
        eps: budget (a float or a string such as ``"8/255"``); default: the training budget.
        norm: ``"linf"`` or ``"l2"``; default: the training norm.
        steps: PGD steps (step size ``2.5 * eps / steps``).
        max_samples: attack only the first ``max_samples`` validation samples, by index: the same images on any
            number of processes (``None``: all).
        allow_unusual_budget: take an ``eps`` :func:`~medrobust.lightning_modules.attacks.threat.check_budget`
            refuses.
    """

    def __init__(
        self,
        eps: float | str | None = None,
        norm: Literal["linf", "l2"] | None = None,
        steps: int = 10,
        max_samples: int | None = None,
        allow_unusual_budget: bool = False,
    ) -> None:
        if (eps is None) != (norm is None):
            raise InputError("RobustValidation: give both eps and norm, or neither (then the training budget is used)")
        self.threat = Threat.parse(norm, eps) if norm is not None else None
        self.allow_unusual_budget = allow_unusual_budget
        if self.threat is not None and not allow_unusual_budget:
            check_budget(self.threat, eps)
        self.steps = steps
        self.max_samples = max_samples
        self._counts: torch.Tensor | None = None
        self._ids = SampleIds()

    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """An L2 budget against the image's diagonal, before the ``medrobust`` command creates the run."""
        if self.threat is not None and not self.allow_unusual_budget:
            check_budget(self.threat, self.threat.eps, image_shape(trainer, pl_module))

    def budget(self, pl_module: LightningModule) -> Threat:
        """The threat this callback attacks at: its own, else the training threat, else none (L-inf 0)."""
        if self.threat is not None:
            return self.threat
        threat = getattr(pl_module, "training_threat", None)
        return threat if threat is not None else Threat("linf", 0.0)

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._counts = empty_counts(pl_module.task, pl_module.num_classes, pl_module.device)
        self._ids.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._counts is None:
            return
        x, y = batch
        limit = within(self._ids.take(trainer, "val", dataloader_idx, len(x)), self.max_samples, len(x))
        x, y = x[:limit], y[:limit]
        if len(x) == 0:
            return
        task = pl_module.task
        attack = PGD(
            self.budget(pl_module).ball(), self.steps, random_start=False, loss_fn=attack_loss(task), task=task
        )
        with trainer.precision_plugin.forward_context():  # bf16-mixed attacks in bf16, as training does
            with torch.inference_mode(False):
                x_adv = attack.perturb(pl_module.net, x.clone(), y.clone())
            with eval_mode(pl_module.net) as net:
                self._counts += confusion_counts(net(x_adv), y, task, pl_module.num_classes)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._counts is None:
            return
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum")
        values = {
            "acc": accuracy(counts),
            "bal_acc": float(balanced_accuracy(counts)),
            "eps": self.budget(pl_module).eps,
        }
        for key, value in values.items():
            pl_module.log(metric_name("val", "robust", key), value, sync_dist=False, prog_bar=key == "bal_acc")
