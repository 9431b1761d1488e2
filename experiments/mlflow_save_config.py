"""Save the resolved CLI config into the MLflow run, where Lightning's SaveConfigCallback cannot."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from typing_extensions import override


class MLflowSaveConfig(SaveConfigCallback):
    """Log the full resolved config as the artifact ``config.yaml`` of the run.

    Lightning's callback writes into ``trainer.log_dir``, which an MLflow logger on a database or HTTP store does not
    have. Use with ``save_config_kwargs={"save_to_log_dir": False}``; runs without an MLflow logger fall back to a file
    in ``trainer.default_root_dir``.
    """

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)
        if logger is not None:
            logger.experiment.log_text(logger.run_id, text, self.config_filename)
        else:
            self.parser.save(self.config, f"{trainer.default_root_dir}/{self.config_filename}", overwrite=True)
