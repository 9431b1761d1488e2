"""Independent initial weights for a model trained from another model's output.

A distilled student and its teacher, or a model trained on a constructed dataset and the source model that made it,
are often the same architecture run with the same ``seed_everything``: both would start from the same initial
weights, and whatever the two then share (features, errors, robustness) partly comes from that common start, not
from what is studied. A part of a run that derives from another model declares it through the ``init_ancestors()``
seam (:class:`~medrobust.callbacks.FeatureDistillation` names its teacher's checkpoint MD5;
:class:`~medrobust.datamodules.MedMNISTDataModule` names a dataset fetched from an MLflow run by its MD5), and the
network is drawn again from a seed derived from the run's seed and those identities: still reproducible, and another
draw than the ancestor's own. Only weights still at their initial values are redrawn, once: a resumed fit, or
weights loaded or trained before ``fit``, are kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier


def ancestors_of(parts: Iterable[Any]) -> list[str]:
    """The identities the given parts (callbacks, a datamodule) declare through ``init_ancestors()``, sorted."""
    found = set()
    for part in parts:
        declare = getattr(part, "init_ancestors", None)
        if callable(declare):
            found.update(str(a) for a in declare())
    return sorted(found)


def derived_seed(seed: int, ancestors: list[str]) -> int:
    """A 63-bit seed from the run's seed and its ancestors' identities (SHA-256; the same on every process)."""
    digest = hashlib.sha256("|".join([str(seed), *ancestors]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def fingerprint(net: torch.nn.Module) -> torch.Tensor:
    """The first few values of every parameter, on the CPU: enough to tell initial weights from loaded or trained
    ones."""
    with torch.no_grad():
        return torch.cat([p.detach().flatten()[:4].float().cpu() for p in net.parameters()])


def redraw(net: torch.nn.Module, hparams: Mapping[str, Any], seed: int) -> None:
    """Replace ``net``'s weights by those a fresh network of these hyperparameters gets under ``seed`` (pretrained
    weights, where the model uses them, are loaded again: only what they leave random is drawn anew). The global
    random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = NormalizedClassifier.from_hparams(hparams, pretrained=bool(hparams.get("pretrained", False)))
    with torch.no_grad():
        net.load_state_dict(fresh.state_dict())
