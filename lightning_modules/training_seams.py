"""The seams through which callbacks change training, without patching the module.

:class:`TrainingSeams` is mixed into :class:`~medrobust.lightning_modules.classifier.ClassifierModule`. Callbacks
register in
``setup(stage="fit")`` and remove what they registered in ``teardown``; names are unique per seam. In one training
step the seams act in this order:

1. input transforms, in registration order: ``fn(x, y) -> (x', y')`` (PGD-AT swaps in adversarial images);
2. the training forward ``logits = net(x)``, recording the requested feature taps of that same pass;
3. the task loss on ``(logits, y)``;
4. loss terms, in registration order: ``fn(step) -> scalar``, each logged as ``train/loss/<name>``
   (TRADES' KL, distillation's per-layer terms); the total is their sum with the task loss.

Auxiliary modules (adapters, probe heads) are trainable parts of the loss terms: registered before the optimizer is
built, they get their own parameter group, are saved in checkpoints for resume, and are kept out of the model's
``state_dict`` entries in the checkpoint, so a checkpoint loads and tests without the callback that made them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.features.feature_taps import resolve_tap
from medrobust.lightning_modules.metrics.metric_names import metric_name
from medrobust.utilities.errors import InputError

Batch = tuple[torch.Tensor, torch.Tensor]
InputTransform = Callable[[torch.Tensor, torch.Tensor], Batch]
AUXILIARY = "auxiliary"
_AUX_PREFIX = AUXILIARY + "."
_AUX_STATE = "auxiliary_state_dict"


@dataclass
class TrainingStep:
    """What a loss term sees of one training step.

    Attributes:
        x: the input the network was trained on (after every input transform). It carries a gradient when a loss
            term was registered with ``needs_input_grad=True``.
        y: its targets.
        logits: ``net(x)``, with the graph attached.
        x_clean: the batch as the loader served it.
        y_clean: its targets.
        task_loss: the task loss on ``(logits, y)``, with the graph attached.
        features: the requested feature taps of the training forward (``features["layer3"]``), with the graph.
    """

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    x_clean: torch.Tensor
    y_clean: torch.Tensor
    task_loss: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)


LossTerm = Callable[[TrainingStep], torch.Tensor]


@dataclass(frozen=True, order=True)
class TrainingThreat(Threat):
    """The threat a callback trains against, announced on the module for the callbacks that judge training.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        eps: the full budget, in pixel units (0: standard training).
        full_from_epoch: the first epoch trained at the full budget for all of its batches (after any warm-up);
            model selection never picks an earlier epoch.
    """

    full_from_epoch: int = 0


class TrainingSeams:
    """Registration methods of the seams; the module calls :meth:`_init_seams` in its ``__init__``."""

    net: nn.Module

    def _init_seams(self) -> None:
        self._input_transforms: dict[str, InputTransform] = {}
        self._loss_terms: dict[str, LossTerm] = {}
        self._input_grad_terms: set[str] = set()
        self._feature_requests: dict[str, tuple[str, ...]] = {}
        self._aux_lr: dict[str, float | None] = {}
        self._optimizer_built = False
        self._training_threat: TrainingThreat | None = None
        self.auxiliary = nn.ModuleDict()

    # ------------------------------------------------------------------------------------- inputs and losses
    def add_input_transform(self, name: str, fn: InputTransform) -> None:
        """Register ``fn(x, y) -> (x', y')``, applied to every training batch before the forward pass."""
        _add_unique(self._input_transforms, name, fn, "input transform")

    def remove_input_transform(self, name: str) -> None:
        self._input_transforms.pop(name, None)

    def add_loss_term(self, name: str, fn: LossTerm, needs_input_grad: bool = False) -> None:
        """Register ``fn(step) -> scalar``, added to the task loss and logged as ``train/loss/<name>``.

        ``needs_input_grad``: ``step.x`` requires grad before the forward, so ``fn`` can differentiate through it
        (``torch.autograd.grad(step.task_loss, step.x, create_graph=True)`` for input-gradient regularisation).
        """
        if name == "task":
            raise InputError("'task' is the name of the task loss itself; choose another loss-term name")
        try:
            metric_name("train", "loss", name)  # the name must survive MLflow
        except ValueError as err:
            raise InputError(str(err)) from None
        _add_unique(self._loss_terms, name, fn, "loss term")
        if needs_input_grad:
            self._input_grad_terms.add(name)

    def remove_loss_term(self, name: str) -> None:
        self._loss_terms.pop(name, None)
        self._input_grad_terms.discard(name)

    @property
    def input_transforms(self) -> tuple[str, ...]:
        return tuple(self._input_transforms)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return tuple(self._loss_terms)

    @property
    def needs_input_grad(self) -> bool:
        return bool(self._input_grad_terms)

    # ------------------------------------------------------------------------------------------ feature taps
    def request_features(self, name: str, layers: Sequence[str]) -> None:
        """Ask for the outputs of ``layers`` (module paths of ``net.backbone``; timm's ``feature_info`` names such as
        ``layer3``, ``stages.2``, ``blocks.4``) in every training step's ``step.features``. An unknown name raises,
        listing the valid ones. Only the training forward is tapped: not attacks, not validation or test."""
        for layer in layers:
            resolve_tap(self.net.backbone, layer)
        _add_unique(self._feature_requests, name, tuple(layers), "feature request")

    def release_features(self, name: str) -> None:
        self._feature_requests.pop(name, None)

    @property
    def requested_features(self) -> tuple[str, ...]:
        """Every tapped layer, once, in request order."""
        return tuple(dict.fromkeys(layer for layers in self._feature_requests.values() for layer in layers))

    # ------------------------------------------------------------------------------------- auxiliary modules
    def add_auxiliary_module(self, name: str, module: nn.Module, lr: float | None = None) -> None:
        """Register a trainable module of a loss term (an adapter, a probe head) before the optimizer is built
        (in the callback's ``setup``). It trains in its own parameter group (``lr``: its own learning rate), moves
        with the model, is wrapped by DDP with it, and is saved for resume, but never becomes part of the model that
        ``load_from_checkpoint`` or ``medrobust test`` rebuild."""
        if self._optimizer_built:
            raise InputError(
                f"Auxiliary module {name!r} registered after the optimizer was built; register it in setup()"
            )
        if name in self.auxiliary:
            raise InputError(
                f"An auxiliary module named {name!r} is already registered; registered: {sorted(self.auxiliary)}"
            )
        self.auxiliary[name] = module
        self._aux_lr[name] = lr

    def remove_auxiliary_module(self, name: str) -> None:
        if name in self.auxiliary:
            del self.auxiliary[name]
        self._aux_lr.pop(name, None)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The model's parameters, then one group per auxiliary module (with its ``lr`` when one was given)."""
        main = [p for n, p in self.named_parameters() if not n.startswith(_AUX_PREFIX)]
        groups: list[dict[str, Any]] = [{"params": main}]
        for name, module in self.auxiliary.items():
            group: dict[str, Any] = {"params": list(module.parameters()), "name": f"{AUXILIARY}.{name}"}
            if self._aux_lr.get(name) is not None:
                group["lr"] = self._aux_lr[name]
            groups.append(group)
        self._optimizer_built = True
        return groups

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Move auxiliary weights out of ``state_dict`` into ``auxiliary_state_dict``."""
        state = checkpoint.get("state_dict", {})
        aux = {k: state.pop(k) for k in [k for k in state if k.startswith(_AUX_PREFIX)]}
        if aux:
            checkpoint[_AUX_STATE] = aux

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give the registered auxiliary modules their saved weights; ignore those of modules not registered now."""
        saved = checkpoint.pop(_AUX_STATE, {})
        state = checkpoint.get("state_dict")
        if state is None or not len(self.auxiliary):
            return
        current = {k: v for k, v in self.state_dict().items() if k.startswith(_AUX_PREFIX)}
        missing = sorted(k for k in current if k not in saved)
        if missing:
            rank_zero_warn(
                f"The checkpoint has no saved state for {len(missing)} auxiliary tensors (e.g. "
                f"{missing[0]}); they keep their initial values"
            )
        state.update({k: saved.get(k, v) for k, v in current.items()})

    # ------------------------------------------------------------------------------------------ threat model
    def set_training_threat(self, threat: TrainingThreat | None) -> None:
        """Announce the threat model training targets (``None`` in ``teardown``); one callback at a time."""
        if threat is not None and self._training_threat is not None and threat != self._training_threat:
            raise InputError(f"Two callbacks train against different threats: {self._training_threat} and {threat}")
        self._training_threat = threat

    @property
    def training_threat(self) -> TrainingThreat | None:
        """What :meth:`set_training_threat` announced; ``None`` for standard training."""
        return self._training_threat


def _add_unique(registry: dict, name: str, value: Any, kind: str) -> None:
    if name in registry:
        raise InputError(f"A {kind} named {name!r} is already registered; registered: {sorted(registry)}")
    registry[name] = value
