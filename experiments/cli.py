"""The ``medrobust`` command: LightningCLI with MLflow tracking, metadata links, test-after-fit and run resume."""

from __future__ import annotations

import glob
import logging
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from callbacks.mlflow_run_recorder import MLflowRunRecorder
from datamodules.files import MedMNISTFileError
from datamodules.medmnist import MedMNISTDataModule
from experiments.mlflow_logger import MLflowRunLogger
from experiments.mlflow_save_config import MLflowSaveConfig
from lightning_modules.classifier import ClassifierModule

log = logging.getLogger(__name__)

DESCRIPTION = (
    "medrobust: tracked MedMNIST training and robustness evaluation. `medrobust fit|validate|test --config X.yaml`; "
    "`medrobust sweep SWEEP.yaml` runs a sweep of child runs under one parent run; `medrobust report "
    "<parent-run-id|experiment>` rebuilds the trade-off table and figures from MLflow (each has its own --help)."
)


class MedRobustCLI(LightningCLI):
    """``medrobust {fit,validate,test}`` for a :class:`ClassifierModule` on a :class:`MedMNISTDataModule`.

    On top of LightningCLI:

    * ``num_classes``, ``in_chans`` and ``task`` flow from the datamodule's MedMNIST metadata into the model;
    * an :class:`MLflowRunLogger` on ``sqlite:///mlflow.db`` is the default logger, and the resolved config is saved
      into the run as ``config.yaml``;
    * a ``checkpoint`` section configures the ModelCheckpoint (default: best by ``val/auroc``, plus ``last.ckpt``),
      in ``<default_root_dir>/<experiment_id>/<run_id>/checkpoints``;
    * ``fit`` ends by testing the best checkpoint into the same run (``--test_after_fit false`` turns it off);
    * ``fit --ckpt_path last`` (or a checkpoint path) continues the MLflow run that wrote the checkpoint.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            ClassifierModule,
            MedMNISTDataModule,
            save_config_callback=MLflowSaveConfig,
            save_config_kwargs={"save_to_log_dir": False, "overwrite": True},
            trainer_defaults={
                "logger": {"class_path": f"{MLflowRunLogger.__module__}.{MLflowRunLogger.__name__}"},
                "default_root_dir": "runs",
            },
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION},
            args=args,
            run=run,
        )

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {name: kwargs for name, kwargs in LightningCLI.subcommands().items() if name != "predict"}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "in_chans", "task"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/auroc", "checkpoint.mode": "max", "checkpoint.save_last": True})
        parser.add_lightning_class_args(MLflowRunRecorder, "mlflow")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="fit ends by testing the best checkpoint")

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None:
            config["ckpt_path"] = self._resume(ckpt_path)
        if config.get("test_after_fit") and isinstance(self.trainer.logger, MLflowRunLogger):
            self.trainer.logger.keep_open_after_fit()

    def after_fit(self) -> None:
        if not self.config_init[self.subcommand].get("test_after_fit") or self.trainer.interrupted:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        rank_zero_info(f"Testing {best or 'the final weights'} into the same run")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)

    def _resume(self, ckpt_path: str) -> str | None:
        """Resolve ``last`` to a file and point the MLflow logger at the run that wrote it."""
        path = self._find_last() if ckpt_path == "last" else Path(ckpt_path)
        if path is None:
            rank_zero_warn(f"--ckpt_path last: no last*.ckpt under {self.trainer.default_root_dir}; starting afresh")
            return None
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: {path} does not exist")
        info = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("mlflow")
        logger = self.trainer.logger
        if info and isinstance(logger, MLflowRunLogger):
            if info["tracking_uri"] != logger.tracking_uri:
                rank_zero_warn(f"{path} was tracked at {info['tracking_uri']}, this run at {logger.tracking_uri}")
            logger.resume_run(info["run_id"])
            rank_zero_info(f"Resuming MLflow run {info['run_id']} from {path}")
        return str(path)

    def _find_last(self) -> Path | None:
        dirpaths = [cb.dirpath for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        # Without an explicit dirpath, checkpoints live in <default_root_dir>/<experiment_id>/<run_id>/checkpoints.
        patterns = [f"{d}/last*.ckpt" for d in dirpaths]
        patterns = patterns or [f"{self.trainer.default_root_dir}/*/*/checkpoints/last*.ckpt"]
        found = [Path(p) for pattern in patterns for p in glob.glob(pattern)]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None


def main(args: list[str] | None = None) -> None:
    """Console entry point. Bad input exits with status 2 and one clear message (the traceback with
    ``MEDROBUST_TRACEBACK=1``); the MLflow run, if one was started, is marked FAILED by the logger."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in ("sweep", "report"):
            from experiments.sweep import report_main, sweep_main

            raise SystemExit((sweep_main if argv[0] == "sweep" else report_main)(argv[1:]))
        MedRobustCLI(args=args)
    except (ValueError, FileNotFoundError, MedMNISTFileError) as err:
        if os.environ.get("MEDROBUST_TRACEBACK"):
            raise
        print(f"medrobust: error: {type(err).__name__}: {err}", file=sys.stderr)
        print("(set MEDROBUST_TRACEBACK=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
