"""MixUp (Zhang et al., 2018) as a callback: an input transform that returns soft labels.

Each training batch is mixed with a shuffled copy of itself, ``x' = lam * x + (1 - lam) * x[perm]``, and the labels
likewise, as per-class probabilities ``(N, C)``; cross-entropy takes them as they are and the training metrics read
their argmax. Validation and test see clean images. Use it from the working directory that holds this file::

    medrobust fit --config experiments/configs/quickstart.yaml --trainer.callbacks+=mixup.MixUp \\
        --trainer.callbacks.alpha=0.4
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

from medrobust.utilities.errors import InputError


class MixUp(Callback):
    """Args:
    alpha: the Beta(alpha, alpha) distribution the mixing weight is drawn from, once per batch (0.2-0.4 is usual).
    name: seam name: give two instances different names.
    """

    def __init__(self, alpha: float = 0.4, name: str = "mixup") -> None:
        if alpha <= 0:
            raise InputError(f"MixUp: alpha must be > 0, got {alpha}")
        self.alpha, self.name = alpha, name

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if pl_module.task != "multiclass":
            raise InputError("MixUp mixes one-hot labels of a single-label task; this task is multi-label")
        self.num_classes = pl_module.num_classes
        pl_module.add_input_transform(self.name, self._mix)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            pl_module.remove_input_transform(self.name)

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # draws from torch's generator, which seed_everything seeds: a run is repeatable
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        perm = torch.randperm(len(x), device=x.device)
        soft = y if y.is_floating_point() else F.one_hot(y, self.num_classes).float()
        return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]
