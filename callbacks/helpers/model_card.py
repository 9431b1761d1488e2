"""What a logged model says about itself (its MLmodel ``metadata["model_card"]``): the data, the task and classes,
the input it takes, the threat it was trained against, how its checkpoint was chosen, and where it came from."""

from __future__ import annotations

import json
from typing import Any

from lightning.pytorch import LightningModule, Trainer

#: the card's version: bump it when a field changes meaning (2: ``checkpoint`` names the model's own files)
CARD_VERSION = 2


def model_card(trainer: Trainer, pl_module: LightningModule, threat: Any) -> dict[str, Any]:
    """The card of the model made from the selected checkpoint of the fit that just ended, trained against
    ``threat`` (the module's announced :class:`TrainingThreat`, or None). ``checkpoint`` (the model's files and their
    MD5s) is filled in when the files are made, ``source_run_id`` when the model is logged."""
    data = trainer.datamodule
    info = data.describe() if hasattr(data, "describe") else {}
    hparams = pl_module.hparams
    selection = getattr(trainer.checkpoint_callback, "selection", None)  # SelectionCheckpoint's rule and epoch
    size, in_chans = int(info.get("size") or hparams.get("input_size") or 28), int(hparams["in_chans"])
    card = {
        "card_version": CARD_VERSION,
        "dataset": {
            "flag": info.get("flag"),
            "size": info.get("size"),
            "md5": info.get("md5"),
            "official": info.get("official"),
            "n_samples": info.get("n_samples"),
        },
        "task": pl_module.task,
        "num_classes": int(hparams["num_classes"]),
        "class_names": list(getattr(data, "class_names", None) or []),
        "input": {
            "size": size,
            "in_chans": in_chans,
            "values": "uint8 0-255 or float in [0, 1]; normalisation is inside the model",
            "layouts": ["(N, H, W)" if in_chans == 1 else "(N, H, W, C)", "(N, C, H, W)"],
        },
        "output": "softmax probabilities per class" if pl_module.task == "multiclass" else "sigmoid per label",
        "network": {
            "model_name": hparams["model_name"],
            "small_input": bool(hparams.get("small_input", False)),
            "mean": list(hparams.get("mean") or []),
            "std": list(hparams.get("std") or []),
        },
        "trained_against": (
            "none (standard training)"
            if threat is None or threat.eps == 0
            else {"norm": threat.norm, "eps": threat.eps, "full_from_epoch": threat.full_from_epoch}
        ),
        "selection": dict(selection() if callable(selection) else {}),
        "checkpoint": None,
        "precision": str(trainer.precision),
        # the training data's planted feature or known-region pattern, where there is one: not a plain classifier
        "shortcut": {k: v for k, v in (info.get("shortcut") or {}).items() if k != "carriers"} or None,
        "evidence": info.get("evidence"),
        "source_run_id": None,
        "serialization": "pt2 (torch.export program: loads without unpickling code)",
    }
    return json.loads(json.dumps(card, default=str))  # plain YAML in the MLmodel file: no tuples or objects
