"""AdversarialTraining: PGD-AT, TRADES and fast FGSM-RS training through the module's seams."""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.helpers.image_shape import image_shape
from medrobust.callbacks.helpers.training_progress import batch_index
from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat import Threat, check_budget, parse_eps
from medrobust.lightning_modules.attacks.trades import TradesAttack
from medrobust.lightning_modules.classifier import TrainingStep, TrainingThreat
from medrobust.lightning_modules.losses import attack_loss
from medrobust.lightning_modules.metrics.confusion import accuracy, confusion_counts, empty_counts
from medrobust.lightning_modules.metrics.metric_names import metric_name
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)

Method = Literal["pgd", "trades", "fgsm_rs"]


class AdversarialTraining(Callback):
    """Train on adversarial examples (Madry PGD-AT, FGSM-RS) or with the TRADES regulariser.

    * ``pgd``: each training batch (or its first ``mix_ratio`` fraction) is replaced by PGD-``steps`` adversarial
      images, step ``alpha`` (default ``2.5 * eps / steps``), random start. Cost about ``steps + 1`` standard steps.
    * ``fgsm_rs``: one FGSM step of ``1.25 * eps`` from a uniform random start in the ball (Wong et al. 2020). Cost
      about 2 standard steps. A catastrophic-overfitting guard runs PGD-10 on a fixed validation batch before each
      validation; when that robust accuracy falls more than ``co_threshold`` below its best, the guard logs it and, with
      ``co_action="stop"``, restores the weights of the best guarded epoch and stops training (so the epoch's
      validation, checkpoint and the final test all see the pre-collapse weights). The guard's state (best guarded
      accuracy and weights, collapse epoch) is saved in checkpoints, so a resumed fit still sees a collapse.
    * ``trades``: the task loss stays cross-entropy on the training input ``x``; the loss term
      ``beta * KL(f(x) || f(x'))`` is added, with ``x'`` maximising that KL by PGD from ``x + 0.001 * N(0, 1)``
      (Zhang et al. 2019). As in the reference code, the inner maximisation compares ``f(x')`` with ``f(x)`` both in
      eval mode on the same ``x`` (:class:`~medrobust.lightning_modules.attacks.trades.TradesAttack`); the outer KL
      uses the training forward's logits, in training mode.

    Attacks run on the bare network (``pl_module.net``) in eval mode, so BatchNorm statistics are not updated by the
    inner maximisation, and every submodule's mode is restored afterwards. Budgets are in pixel units. The budget is
    announced on the module (:meth:`~medrobust.lightning_modules.classifier.ClassifierModule.set_training_threat`), so
    robust validation attacks at it and model selection skips the warm-up epochs.

    Args:
        method: ``"pgd"``, ``"trades"`` or ``"fgsm_rs"``.
        eps: budget, a float or a string such as ``"8/255"``. ``0`` (or TRADES with ``beta=0``) is standard
            training, so an eps or beta sweep can include its own baseline.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps for ``pgd`` and ``trades`` (``fgsm_rs`` takes one).
        alpha: step size; defaults as above.
        beta: TRADES trade-off (larger: more robust, less accurate).
        mix_ratio: fraction of each batch made adversarial (``pgd``, ``fgsm_rs``); the rest stays clean.
        warmup_epochs: eps grows linearly from 0 to ``eps`` over these epochs, batch by batch (gradient accumulation
            does not slow it down).
        co_guard: run the catastrophic-overfitting guard (``fgsm_rs`` only).
        co_threshold: absolute fall in guarded PGD accuracy that counts as a collapse.
        co_action: ``"stop"`` (restore and stop) or ``"warn"``.
        name: seam name; give two instances different names.
        allow_unusual_budget: take a budget :func:`~medrobust.lightning_modules.attacks.threat.check_budget` refuses
            (an L-inf budget that is not a whole number of grey levels, or above 64/255; an L2 budget longer than the
            image's diagonal).
    """

    def __init__(
        self,
        method: Method = "pgd",
        eps: float | str = "8/255",
        norm: Literal["linf", "l2"] = "linf",
        steps: int = 7,
        alpha: float | str | None = None,
        beta: float = 6.0,
        mix_ratio: float = 1.0,
        warmup_epochs: int = 0,
        co_guard: bool = True,
        co_threshold: float = 0.2,
        co_action: Literal["stop", "warn"] = "stop",
        name: str = "adversarial",
        allow_unusual_budget: bool = False,
    ) -> None:
        if method not in ("pgd", "trades", "fgsm_rs"):
            raise InputError(f"Unknown adversarial training method {method!r}; valid: pgd, trades, fgsm_rs")
        if not 0.0 < mix_ratio <= 1.0:
            raise InputError(f"mix_ratio must be in (0, 1], got {mix_ratio}")
        self.threat = Threat.parse(norm, eps)  # validates norm and eps
        self.allow_unusual_budget = allow_unusual_budget
        if not allow_unusual_budget:
            check_budget(self.threat, eps)
        self.method = method
        self.eps, self.norm = self.threat.eps, self.threat.norm
        self.steps = 1 if method == "fgsm_rs" else steps
        self.alpha = parse_eps(alpha) if alpha is not None else None
        self.beta = beta
        self.mix_ratio = mix_ratio
        self.warmup_epochs = warmup_epochs
        self.co_guard = co_guard and method == "fgsm_rs"
        self.co_threshold = co_threshold
        self.co_action = co_action
        self.name = name
        self._module: LightningModule | None = None
        self._trainer: Trainer | None = None
        self._guard_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._guard_best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.collapsed_at: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, method=self.method)

    # ------------------------------------------------------------------------------------------ registration
    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """An L2 budget against the image's diagonal, and TRADES against the task, before the ``medrobust`` command
        creates the run."""
        if stage == "fit" and not self.allow_unusual_budget:
            check_budget(self.threat, self.threat.eps, image_shape(trainer, pl_module))
        if stage == "fit" and not self.standard and self.method == "trades" and pl_module.task != "multiclass":
            raise InputError("TRADES' KL term is defined for softmax classifiers; use method='pgd' for multi-label")

    @property
    def standard(self) -> bool:
        """The zero point of an eps (or TRADES beta) sweep: standard training, nothing attacks."""
        return self.eps == 0 or (self.method == "trades" and self.beta == 0)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_inputs(trainer, pl_module, stage)
        standard = self.standard  # its budget is 0
        pl_module.set_training_threat(
            TrainingThreat(self.norm, 0.0 if standard else self.eps, 0 if standard else self.warmup_epochs)
        )
        if standard:
            rank_zero_info(f"{type(self).__name__}: eps={self.eps:g}, beta={self.beta:g}: standard training")
            self.co_guard = False
            return
        self._module, self._trainer = pl_module, trainer
        if self.method == "trades":
            pl_module.add_loss_term(self.name, self._trades_term)
        else:
            pl_module.add_input_transform(self.name, self._adversarial_batch)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.remove_input_transform(self.name)
            pl_module.remove_loss_term(self.name)
            pl_module.set_training_threat(None)
            self._module = self._trainer = None

    # ---------------------------------------------------------------------------------------------- attacks
    def current_eps(self) -> float:
        """``eps`` after warm-up: linear in the number of training batches seen, over ``warmup_epochs``."""
        trainer = self._trainer
        if not self.warmup_epochs or trainer is None:
            return self.eps
        per_epoch = max(int(trainer.num_training_batches), 1)
        progress = (batch_index(trainer) + 1) / (self.warmup_epochs * per_epoch)
        return self.eps * min(1.0, progress)

    def _step_size(self, eps: float) -> float:
        if self.alpha is not None:
            return self.alpha
        return 1.25 * eps if self.method == "fgsm_rs" else 2.5 * eps / self.steps

    def _adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        module = self._module
        eps = self.current_eps()
        module.log(metric_name("train", "adv", "eps"), eps, on_step=True, on_epoch=False)
        n_adv = max(1, round(self.mix_ratio * len(x)))
        attack = PGD(
            Threat(self.norm, eps).ball(),
            self.steps,
            self._step_size(eps),
            loss_fn=attack_loss(module.task),
            task=module.task,
        )
        x_adv = attack.perturb(module.net, x[:n_adv], y[:n_adv])
        if n_adv == len(x):
            return x_adv, y
        return torch.cat([x_adv, x[n_adv:]]), y

    def _trades_term(self, step: TrainingStep) -> torch.Tensor:
        module = self._module
        eps = self.current_eps()
        module.log(metric_name("train", "adv", "eps"), eps, on_step=True, on_epoch=False)
        # The input the network was trained on, after every other input transform.
        x_adv = TradesAttack(Threat(self.norm, eps).ball(), self.steps, self._step_size(eps)).perturb(
            module.net, step.x
        )
        # The outer KL runs in the module's training mode against the training forward's logits, as in the reference.
        log_adv = F.log_softmax(module.net(x_adv), dim=1)
        return self.beta * F.kl_div(log_adv, F.softmax(step.logits, dim=1), reduction="batchmean")

    # ---------------------------------------------------------------------- catastrophic-overfitting guard
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.co_guard:
            return
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if loader is None:
            rank_zero_warn("fgsm_rs guard needs a validation loader; catastrophic overfitting is not watched")
            self.co_guard = False
            return
        # Under DDP a rank whose share of a small validation split is empty guards nothing, but still reduces.
        batch = next(iter(loader), None)
        self._guard_batch = None if batch is None else (batch[0].to(pl_module.device), batch[1].to(pl_module.device))

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.co_guard or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        task, c = pl_module.task, pl_module.num_classes
        counts = empty_counts(task, c, pl_module.device)
        if self._guard_batch is not None:
            x, y = self._guard_batch
            attack = PGD(self.threat.ball(), 10, self.eps / 4, loss_fn=attack_loss(task), task=task)
            x_adv = attack.perturb(pl_module.net, x, y)
            with eval_mode(pl_module.net) as net:
                counts += confusion_counts(net(x_adv), y, task, c)
        acc = accuracy(trainer.strategy.reduce(counts, reduce_op="sum"))
        pl_module.log(metric_name("train", "co_guard", "pgd_acc"), acc, on_epoch=True, sync_dist=False)
        if self._guard_best is not None and self._guard_best[0] - acc > self.co_threshold:
            self._collapse(trainer, pl_module, acc)
        elif self._guard_best is None or acc >= self._guard_best[0]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()}
            self._guard_best = (acc, state)

    def _collapse(self, trainer: Trainer, pl_module: LightningModule, acc: float) -> None:
        best_acc, best_state = self._guard_best
        if self.collapsed_at is None:  # the first collapse is the one to report
            self.collapsed_at = trainer.current_epoch
        pl_module.log(metric_name("train", "co_guard", "collapsed"), 1.0, on_epoch=True)
        action = " Restoring the best guarded weights and stopping." if self.co_action == "stop" else ""
        rank_zero_warn(
            f"Catastrophic overfitting at epoch {trainer.current_epoch}: PGD-10 accuracy on the guard batch fell from "
            f"{best_acc:.3f} to {acc:.3f}.{action}"
        )
        if self.co_action == "stop":
            pl_module.net.load_state_dict(copy.deepcopy(best_state))
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        best_acc, best_state = self._guard_best if self._guard_best is not None else (None, None)
        return {"guard_best_acc": best_acc, "guard_best_state": best_state, "collapsed_at": self.collapsed_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best_acc, best_state = state_dict.get("guard_best_acc"), state_dict.get("guard_best_state")
        self._guard_best = (best_acc, best_state) if best_acc is not None else None
        self.collapsed_at = state_dict.get("collapsed_at")
