"""A defence written the way README's "Write your own callback" teaches: every seam, a feature tap, restored after.

Noise on the inputs (an input transform), a penalty on the input gradient of the task loss (a loss term that needs
the input gradient; Ross & Doshi-Velez 2018), and deep supervision of ``layer3`` through a linear head (a feature tap
and an auxiliary module). Use it from the working directory that holds this file::

    medrobust fit --config experiments/configs/quickstart.yaml --trainer.callbacks+=gradient_penalty.GradientPenalty \\
        --trainer.callbacks.lam=0.1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn

from medrobust.lightning_modules.classifier import TrainingStep
from medrobust.lightning_modules.features.feature_taps import feature_channels, pooled
from medrobust.utilities.errors import InputError


class GradientPenalty(Callback):
    """Args:
    lam: weight of the squared input-gradient norm.
    noise: std of the Gaussian input noise (pixel units).
    tap: the layer supervised by the auxiliary head (its weight: ``head_weight``; 0 turns the head off).
    name: seam name: give two instances different names.
    """

    def __init__(
        self,
        lam: float = 0.1,
        noise: float = 0.02,
        tap: str = "layer3",
        head_weight: float = 0.3,
        name: str = "gradpen",
    ) -> None:
        if lam < 0 or noise < 0 or head_weight < 0:
            raise InputError(f"lam, noise and head_weight must be >= 0, got {lam}, {noise}, {head_weight}")
        self.lam, self.noise, self.tap, self.head_weight, self.name = lam, noise, tap, head_weight, name

    @property
    def state_key(self) -> str:  # two instances with different names keep separate state in checkpoints
        return self._generate_state_key(name=self.name)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":  # training seams only matter for fit; `medrobust test` loads the model without them
            return
        self.module = pl_module
        pl_module.add_input_transform(f"{self.name}_noise", self._noisy)
        pl_module.add_loss_term(f"{self.name}/input_grad", self._input_grad, needs_input_grad=True)
        if self.head_weight > 0:
            pl_module.request_features(self.name, [self.tap])
            channels = feature_channels(pl_module.net.backbone, self.tap)
            pl_module.add_auxiliary_module(f"{self.name}_head", nn.Linear(channels, pl_module.num_classes))
            pl_module.add_loss_term(f"{self.name}/head", self._head)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.remove_input_transform(f"{self.name}_noise")
        pl_module.remove_loss_term(f"{self.name}/input_grad")
        pl_module.remove_loss_term(f"{self.name}/head")
        pl_module.release_features(self.name)
        pl_module.remove_auxiliary_module(f"{self.name}_head")

    def _noisy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x + self.noise * torch.randn_like(x)).clamp(0, 1), y

    def _input_grad(self, step: TrainingStep) -> torch.Tensor:
        (grad,) = torch.autograd.grad(step.task_loss, step.x, create_graph=True)
        return self.lam * grad.pow(2).sum(dim=(1, 2, 3)).mean() * len(step.x)  # per-sample gradients of a mean loss

    def _head(self, step: TrainingStep) -> torch.Tensor:
        head = self.module.auxiliary[f"{self.name}_head"]
        logits = head(pooled(step.features[self.tap], self.module.net.backbone))
        return self.head_weight * F.cross_entropy(logits, step.y)
