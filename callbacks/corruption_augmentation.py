"""CorruptionAugmentation: train on MedMNIST-C corruptions, to compare against adversarial training."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from medrobust.callbacks.helpers.training_progress import batch_index
from medrobust.datamodules.corruptions import SEVERITIES, check, corrupt, corruptions_for
from medrobust.utilities.errors import InputError


class CorruptionAugmentation(Callback):
    """Replace a fraction ``p`` of each training batch with corrupted versions, as MedMNIST-C proposes.

    Each chosen sample gets a corruption drawn uniformly from ``corruptions`` (default: all of the dataset's) at a
    severity drawn uniformly from ``severities``. Draws are seeded by ``seed``, the training batch's index (batches,
    not optimizer steps, so every batch of a gradient-accumulation window gets its own draw) and the process rank.
    Registers an input transform (the module's seam), so it composes with other callbacks in registration order.

    Args:
        p: probability that a sample is corrupted.
        corruptions: corruption names; ``None`` for every MedMNIST-C corruption of the dataset.
        severities: severity levels to draw from.
        seed: base seed.
        name: seam name.
    """

    def __init__(
        self,
        p: float = 0.5,
        corruptions: list[str] | None = None,
        severities: list[int] | None = None,
        seed: int = 0,
        name: str = "corruption_augmentation",
    ) -> None:
        if not 0.0 < p <= 1.0:
            raise InputError(f"p must be in (0, 1], got {p}")
        self.p, self.corruptions, self.seed, self.name = p, corruptions, seed, name
        self.severities = list(severities or SEVERITIES)
        self._trainer: Trainer | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.flag = trainer.datamodule.spec.flag
        self.names = self.corruptions or corruptions_for(self.flag)
        for name in self.names:
            for severity in self.severities:
                check(self.flag, name, severity)  # clear errors before training starts
        self._trainer = trainer
        pl_module.add_input_transform(self.name, self._augment)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.remove_input_transform(self.name)

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = self._trainer
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * trainer.global_rank + batch_index(trainer))
        chosen = torch.rand(len(x), generator=g) < self.p
        which = torch.randint(len(self.names), (len(x),), generator=g)
        level = torch.randint(len(self.severities), (len(x),), generator=g)
        if not chosen.any():
            return x, y
        out = x.clone()
        images = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        for c in which[chosen].unique().tolist():
            for s in level[chosen & (which == c)].unique().tolist():
                idx = (chosen & (which == c) & (level == s)).nonzero().flatten()
                seed = int(torch.randint(2**31 - 1, (1,), generator=g))
                corrupted = corrupt(images[idx], self.flag, self.names[c], self.severities[s], seed)
                out[idx.to(x.device)] = corrupted.to(x.device, x.dtype) / 255
        return out, y
