"""MLflowSeams: what the callbacks plugged into training through the module's seams, recorded in the run."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import log_params_once, mlflow_logger


class MLflowSeams(Callback):
    """At the start of training, tags ``seams.input_transforms``, ``seams.loss_terms``, ``seams.feature_taps`` and
    ``seams.auxiliary_modules`` with the names registered on the module (in order), so a defence that only transforms
    inputs leaves a trace in the run, and a run shows how its callbacks composed; and the training threat as used
    (params ``train.threat.norm`` and ``train.threat.eps``, a number: the config's ``8/255`` parsed)."""

    @override
    @rank_zero_only
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if logger is None or not hasattr(pl_module, "input_transforms"):
            return
        seams = {
            "seams.input_transforms": pl_module.input_transforms,
            "seams.loss_terms": ("task", *pl_module.loss_terms),
            "seams.feature_taps": pl_module.requested_features,
            "seams.auxiliary_modules": tuple(pl_module.auxiliary),
        }
        for key, names in seams.items():
            logger.experiment.set_tag(logger.run_id, key, ", ".join(names) or "-")
        threat = getattr(pl_module, "training_threat", None)
        if threat is not None:  # the budget as the number used, beside the string the config wrote
            log_params_once(logger, {"train.threat.norm": threat.norm, "train.threat.eps": f"{threat.eps:.8g}"})
