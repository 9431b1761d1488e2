"""The ``medrobust`` command: LightningCLI with MLflow tracking, metadata links, test-after-fit and run resume."""

from __future__ import annotations

import copy
import glob
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.helpers.atomic_checkpoint_io import AtomicCheckpointIO
from medrobust.callbacks.mlflow_checkpoints import MLflowCheckpoints
from medrobust.callbacks.mlflow_dataset_inputs import MLflowDatasetInputs
from medrobust.callbacks.mlflow_model import MLflowModel
from medrobust.callbacks.mlflow_seams import MLflowSeams
from medrobust.callbacks.mlflow_system_metrics import MLflowSystemMetrics
from medrobust.callbacks.mlflow_test_record import MLflowTestRecord
from medrobust.callbacks.selection_checkpoint import SelectionCheckpoint
from medrobust.datamodules.files import absolutize_env_paths, find
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.checkpoint_inputs import as_dict, check_fits_data, fetch_remote_checkpoint, warn_overridden
from medrobust.experiments.cli_parser import MedRobustParser
from medrobust.experiments.config_merge import BASE_CONFIG, merge_config_args
from medrobust.experiments.resume import (
    ResumePoint,
    checkpoint_identity,
    find_resume_point,
    has_resume_state,
)
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.experiments.tracking.mlflow_save_config import MLflowSaveConfig
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.utilities.errors import InputError
from medrobust.utilities.mlflow_source import is_remote
from medrobust.utilities.tracking_uri import redact_uri

log = logging.getLogger(__name__)

DESCRIPTION = (
    "medrobust: tracked MedMNIST training and robustness evaluation. `medrobust fit|validate|test --config X.yaml`; "
    "`medrobust sweep SWEEP.yaml` runs a sweep of child runs under one parent run; `medrobust report "
    "<parent-run-id|experiment>` rebuilds the trade-off table and figures from MLflow; `medrobust construct CKPT "
    "--kind det|rand|robust|nonrobust --out X.npz` builds Ilyas et al.'s datasets (each has its own --help)."
)


SUBCOMMANDS = ("fit", "validate", "test")


def _parser_kwargs(run: bool) -> dict[str, Any]:
    """``BASE_CONFIG`` as the parser's default config file: each subcommand's parser when there are subcommands.

    jsonargparse reads default config files as glob patterns and skips one that matches nothing, so the path is
    escaped and its absence is an error rather than a silent fall-back to Lightning's defaults."""
    if not BASE_CONFIG.is_file():
        raise FileNotFoundError(f"{BASE_CONFIG} is missing: the medrobust install is incomplete")
    defaults = {"default_config_files": [glob.escape(str(BASE_CONFIG))]}
    if not run:
        return {"description": DESCRIPTION, **defaults}
    return {"description": DESCRIPTION, **{name: defaults for name in SUBCOMMANDS}}


class MedRobustCLI(LightningCLI):
    """``medrobust {fit,validate,test}`` for a :class:`ClassifierModule` on a :class:`MedMNISTDataModule`.

    On top of LightningCLI:

    * ``num_classes``, ``in_chans`` and ``task`` flow from the datamodule's MedMNIST metadata into the model;
    * an :class:`MLflowRunLogger` on ``sqlite:///mlflow.db`` is the default logger; the resolved config is saved
      into the run as ``config.yaml`` and params; every run records its data, checkpoints, system metrics, test
      confusion matrix and ``summary/*`` metrics;
    * a ``checkpoint`` section configures the :class:`SelectionCheckpoint` (a named model-selection rule, default
      ``clean_auroc``, plus ``last.ckpt``), in ``<default_root_dir>/<experiment_id>/<run_id>/checkpoints``;
    * the data is loaded and checked before the MLflow run is created, so bad input leaves no FAILED run behind;
    * ``fit`` ends by testing the selected checkpoint into the same run (``--test_after_fit false`` turns it off);
    * ``fit --ckpt_path last`` continues the unfinished run this config names (its experiment and run name or id),
      and refuses when that is ambiguous; ``--ckpt_path <file>`` continues the run that wrote the file. Under SLURM,
      a fit without ``--ckpt_path`` does the same, and never resumes another run's ``hpc_ckpt_*.ckpt``;
    * checkpoints are loaded with ``weights_only=True``, and pretrained weights are not fetched when a checkpoint
      supplies the weights.
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
            parser_kwargs=_parser_kwargs(run),
            parser_class=MedRobustParser,
            args=args,
            run=run,
        )

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {name: kwargs for name, kwargs in LightningCLI.subcommands().items() if name != "predict"}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "in_chans", "task", "input_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(SelectionCheckpoint, "checkpoint")
        parser.add_lightning_class_args(MLflowSystemMetrics, "system_metrics")
        parser.add_lightning_class_args(MLflowModel, "mlflow_model")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="fit ends by testing the best checkpoint")

    @override
    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads a checkpoint's hyperparameters into the config before anything else; refuse an unsafe
        file first, with our message (the load is ``weights_only=True`` either way)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        source = None
        if ckpt_path and is_remote(str(ckpt_path)):
            source, ckpt_path = str(ckpt_path), self._fetch_checkpoint(subcommand, str(ckpt_path))
        try:
            self._parse_local_ckpt_path(subcommand, ckpt_path)
        finally:
            if source is not None:  # the run records what the user wrote, not a temporary file
                self.config[subcommand]["ckpt_path"] = source

    def _parse_local_ckpt_path(self, subcommand: str | None, ckpt_path: str | None) -> None:
        if ckpt_path and Path(ckpt_path).is_file():
            checkpoint_identity(Path(ckpt_path))
            before = as_dict(self.config[subcommand].get("model"))
            super()._parse_ckpt_path()
            warn_overridden(before, self.config[subcommand].get("model"), ckpt_path)
            return
        super()._parse_ckpt_path()

    def _fetch_checkpoint(self, subcommand: str, source: str) -> str:
        logger = self.config[subcommand].get("trainer.logger")
        self._fetched = fetch_remote_checkpoint(subcommand, source, getattr(logger, "init_args", None))
        self.config[subcommand]["ckpt_path"] = str(self._fetched.path)
        return str(self._fetched.path)

    @override
    def instantiate_classes(self) -> None:
        """LightningCLI's, except that the model is built with ``pretrained=False`` when a checkpoint will supply its
        weights (no network needed); the config the run records keeps what the user wrote."""
        config = self.config
        section = config.get(self.subcommand, config) if self.subcommand else config
        if section.get("ckpt_path") is not None and section.get("model.pretrained"):
            config = copy.deepcopy(config)
            (config.get(self.subcommand, config) if self.subcommand else config)["model.pretrained"] = False
        _point_mlflow_at_logger(section)
        self.config_init = self.parser.instantiate_classes(config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    @override
    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        """Every run records its data, checkpoints and test results (the recorders take no settings), and writes its
        checkpoints atomically (:class:`AtomicCheckpointIO`, unless the config names a checkpoint IO plugin)."""
        recorders = [MLflowDatasetInputs(), MLflowCheckpoints(), MLflowTestRecord(), MLflowSeams()]
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # checkpoints whole or absent
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, [*callbacks, *recorders])

    # ---------------------------------------------------------------------------------------------- hooks
    def before_fit(self) -> None:
        self._validate_data("fit")
        self._check_callback_inputs("fit")
        self._name_command("fit")
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = self._resume(config.get("ckpt_path"))
        if config.get("test_after_fit") and isinstance(self.trainer.logger, MLflowRunLogger):
            self.trainer.logger.keep_open_after_fit()

    def before_validate(self) -> None:
        self._validate_data("validate")
        self._use_fetched_checkpoint()
        self._check_checkpoint_file()
        self._check_callback_inputs("validate")

    def before_test(self) -> None:
        self._validate_data("test")
        self._use_fetched_checkpoint()
        self._check_checkpoint_file()
        self._check_callback_inputs("test")
        self._name_command("test")

    def _use_fetched_checkpoint(self) -> None:
        """A checkpoint fetched from MLflow: the Trainer reads the local copy; the run gets the source's tags."""
        if getattr(self, "_fetched", None) is None:
            return
        self.config_init[self.subcommand]["ckpt_path"] = str(self._fetched.path)
        logger = self.trainer.logger
        if isinstance(logger, MLflowRunLogger):
            logger.tags = {**(logger.tags or {}), **self._fetched.tags}
        model_id = self._fetched.tags.get("test.checkpoint.model_id")
        for callback in self.trainer.callbacks if model_id else []:
            if isinstance(callback, MLflowModel):
                callback.model_id = model_id

    def after_fit(self) -> None:
        if not self.config_init[self.subcommand].get("test_after_fit") or self.trainer.interrupted:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        logger = self.trainer.logger
        away = isinstance(logger, MLflowRunLogger) and not logger.tracking_server_reachable()  # rank 0 writes
        if self.trainer.strategy.broadcast(away, src=0):  # every process skips the test, or none
            rank_zero_warn(
                "The tracking server is away: the test after fit is skipped (its reports read the run). Once the "
                f"run's records are sent, test it with `medrobust test --config <this config> --ckpt_path {best}`"
            )
            logger.finalize("success")  # the run ends now (FINISHED once its records are sent)
            return
        rank_zero_info(f"Testing {best or 'the final weights'} into the same run")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)

    def _validate_data(self, stage: str) -> None:
        """Load and check the data now, before the MLflow run exists: a missing file is downloaded first (where
        ``download`` allows), so a failed download leaves no FAILED run either."""
        dm = self.datamodule
        if not isinstance(dm, MedMNISTDataModule):
            return
        found = dm.path is not None or find(dm.spec, dm.roots) is not None
        if not found and dm.download:
            dm.prepare_data()
            found = find(dm.spec, dm.roots) is not None
        if found:
            dm.setup(stage)
            dm.check_shards(self.trainer.world_size)

    def _name_command(self, command: str) -> None:
        if isinstance(self.trainer.logger, MLflowRunLogger):
            self.trainer.logger.command = command
            self.trainer.logger.set_journal_root(self.trainer.default_root_dir)

    def _check_callback_inputs(self, stage: str) -> None:
        """The callbacks' ``check_inputs(trainer, pl_module, stage)`` seam, before the MLflow run exists: a callback
        that loads or checks something its settings name (a teacher, an attack suite) says so with a one-line error
        and leaves no FAILED run."""
        for callback in self.trainer.callbacks:
            check = getattr(callback, "check_inputs", None)
            if callable(check):
                check(self.trainer, self.model, stage)

    def _check_checkpoint_file(self) -> None:
        """A file that is not a medrobust checkpoint, or one whose model does not fit the data, is refused before
        the run exists."""
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path in (None, "last", "best", "hpc"):
            return
        checkpoint_identity(Path(ckpt_path))
        if isinstance(self.datamodule, MedMNISTDataModule):
            check_fits_data(Path(ckpt_path), self.datamodule)

    def _resume(self, ckpt_path: str | None) -> str | None:
        """What ``fit`` resumes from: a file, the run this config names (``last``; under SLURM also ``None``), or
        nothing. The MLflow logger is pointed at the run the checkpoint belongs to."""
        slurm = SLURMEnvironment.detect()
        if ckpt_path not in (None, "last"):
            point = ResumePoint(Path(ckpt_path), checkpoint_identity(Path(ckpt_path)).get("run_id"))
            if not has_resume_state(Path(ckpt_path)):
                raise InputError(
                    f"--ckpt_path {ckpt_path} holds no optimizer state (a selected checkpoint: only last.ckpt keeps "
                    "it), so fit cannot continue from it. Resume with --ckpt_path last (or that run's last.ckpt); to "
                    "evaluate it, use `medrobust test --ckpt_path`."
                )
        elif ckpt_path == "last" or slurm:
            point = self._find_resume_point(hpc=slurm, explicit=ckpt_path == "last")
            if point is None:
                if ckpt_path == "last":
                    rank_zero_warn("--ckpt_path last: this config's run has no checkpoint to resume; starting afresh")
                # Under SLURM, Lightning resumes the newest hpc_ckpt_* in default_root_dir when ckpt_path is None,
                # whichever run wrote it. "last" makes it look in this new run's own (empty) folder instead.
                return "last" if slurm else None
        else:
            return None
        logger = self.trainer.logger
        if point.run_id and isinstance(logger, MLflowRunLogger):
            logger.resume_run(point.run_id)
            where = point.path or "epoch 0 (it was stopped before its first checkpoint)"
            rank_zero_info(f"Resuming MLflow run {point.run_id} from {where}")
        if point.path is not None:
            return str(point.path)
        # Under SLURM, None would make Lightning resume the newest hpc_ckpt_* of default_root_dir, whoever wrote it
        return "last" if slurm else None

    def _find_resume_point(self, hpc: bool, explicit: bool) -> ResumePoint | None:
        logger = self.trainer.logger
        if not isinstance(logger, MLflowRunLogger):
            raise InputError("--ckpt_path last needs the MLflow logger, to know which run this config names")
        dirpath = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        return find_resume_point(
            logger._mlflow_client,
            logger._experiment_name,
            logger._run_name,
            logger._run_id,
            Path(self.trainer.default_root_dir),
            dirpath,
            hpc=hpc,
            explicit=explicit,
            first_process=rank_zero_only.rank == 0,  # from the launcher's environment, before DDP starts
        )


def main(args: list[str] | None = None) -> None:
    """Console entry point. Bad input (:class:`InputError`) exits with status 2 and one clear message (the traceback
    with ``MEDROBUST_TRACEBACK=1``); any other error keeps its traceback. A started MLflow run is marked FAILED."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    absolutize_env_paths()
    argv = sys.argv[1:] if args is None else list(args)
    if os.getcwd() not in sys.path:  # user callbacks in the working directory are importable, as with python -m
        sys.path.insert(0, os.getcwd())
    try:
        if argv and argv[0] == "sweep":
            from medrobust.experiments.sweeping.sweep import sweep_main

            raise SystemExit(sweep_main(argv[1:]))
        if argv and argv[0] == "construct":
            from medrobust.experiments.construction.construct import construct_main

            raise SystemExit(construct_main(argv[1:]))
        if argv and argv[0] == "register":
            from medrobust.experiments.registry.register import register_main

            raise SystemExit(register_main(argv[1:]))
        if argv and argv[0] == "sync":
            from medrobust.experiments.tracking.sync import sync_main

            raise SystemExit(sync_main(argv[1:]))
        if argv and argv[0] == "report":
            from medrobust.experiments.reporting.report import report_main

            raise SystemExit(report_main(argv[1:]))
        merged = merge_config_args(argv)
        try:
            MedRobustCLI(args=merged if args is not None or merged != argv else None)
        except ValueError as err:  # jsonargparse wraps a callback's own InputError in a long union-type message
            inner = _input_error_within(err)
            if inner is None or os.environ.get("MEDROBUST_TRACEBACK"):
                raise
            raise inner from None
    except InputError as err:
        if os.environ.get("MEDROBUST_TRACEBACK"):
            raise
        print(f"medrobust: error: {type(err).__name__}: {redact_uri(str(err))}", file=sys.stderr)
        print("(set MEDROBUST_TRACEBACK=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _point_mlflow_at_logger(section: Any) -> None:
    """A ``--data.path`` in MLflow (``runs:/``, ``mlflow:``) is fetched from the store the run logs to: the logger's
    ``tracking_uri``, when the config gives one, becomes ``$MLFLOW_TRACKING_URI`` before the datamodule is built."""
    path = section.get("data.path")
    logger = section.get("trainer.logger")
    uri = getattr(getattr(logger, "init_args", None), "tracking_uri", None)
    if path and is_remote(str(path)) and uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri


def _input_error_within(err: BaseException) -> InputError | None:
    """The :class:`InputError` an exception was raised from or while handling, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
