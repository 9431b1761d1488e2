"""DistanceTracker: RobustnessEvaluation's budget-free part, the per-sample minimal distances of a test pass."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from medrobust.callbacks.evaluation.outputs import gather_rows
from medrobust.callbacks.evaluation.sample_ids import within
from medrobust.lightning_modules.attacks.min_distance import (
    DISTANCE_ATTACKS,
    DistanceSettings,
    distance_summary,
    minimal_distances,
)
from medrobust.lightning_modules.metrics.metric_names import build_name
from medrobust.utilities.errors import InputError

STATS = ("median", "q25", "q75", "fooled", "n", "misclassified", "undefined")


class DistanceTracker:
    """Collects each distance attack's per-sample distances over the test batches and reduces them over processes.

    Args:
        attacks: any of :data:`DISTANCE_ATTACKS`; ``None``: ``deepfool`` for single-label tasks, none for multi-label.
        settings: the searches' settings.
        max_samples: measure the first this many test samples of the split, by index (``None``: every sample the
            caller passes).
    """

    def __init__(self, attacks: list[str] | None, settings: DistanceSettings | None, max_samples: int | None) -> None:
        unknown = sorted(set(attacks or []) - set(DISTANCE_ATTACKS))
        if unknown:
            raise InputError(f"Unknown distance_attacks {unknown}; valid: {list(DISTANCE_ATTACKS)}")
        self.requested = attacks
        self.settings = settings or DistanceSettings()
        self.max_samples = max_samples
        self.attacks: list[str] = []
        self._values: dict[str, list[torch.Tensor]] = {}

    def setup(self, task: str) -> None:
        """Resolve the attacks for ``task``; a distance attack named for a multi-label task is refused."""
        if task == "multilabel" and self.requested:
            raise InputError(f"distance_attacks {self.requested} assume a softmax classifier, not multi-label")
        default = [] if task == "multilabel" else ["deepfool"]
        self.attacks = list(self.requested) if self.requested is not None else default

    def reset(self) -> None:
        self._values = {attack: [] for attack in self.attacks}

    def measure(
        self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None, num_classes: int
    ) -> dict[str, float]:
        """Distances of the batch ``x``, whose samples have the global ``ids``; seconds spent per attack."""
        k = within(ids, self.max_samples, len(x))
        seconds = {}
        for attack in self._values if k > 0 else ():
            start = time.perf_counter()
            self._values[attack].append(minimal_distances(attack, net, x[:k], y[:k], num_classes, self.settings))
            seconds[attack] = time.perf_counter() - start
        return seconds

    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, dict[str, Any]]:
        """Every process's distances, summarised and logged as ``test/adv/<attack>/<norm>_dist/<stat>``; the report."""
        report = {}
        for attack, parts in self._values.items():
            values = gather_rows(trainer, torch.cat(parts) if parts else torch.zeros(0), pl_module.device)
            norm = DISTANCE_ATTACKS[attack]
            stats = distance_summary(values)
            for name in STATS:
                if name in stats:
                    pl_module.log(build_name("adv_distance", attack=attack, norm=norm, stat=name), float(stats[name]))
            attacked = torch.where(values.isnan(), math.inf, values)  # undefined: not flipped
            report[attack] = {"norm": norm, **stats, "values": sorted(attacked[attacked > 0].tolist())}
        return report

    def describe(self) -> dict[str, Any]:
        """The settings as used; with no distance attacks, only that (their settings were not used)."""
        if not (self.attacks or self.requested):
            return {"distance_attacks": []}
        return {
            "distance_attacks": self.attacks or self.requested,
            "distance": dict(vars(self.settings)),
            "distance_max_samples": self.max_samples,
        }
