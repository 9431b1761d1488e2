"""FeatureDistillation: intermediate-layer and logit distillation from a frozen teacher, through the module's seams."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from tqdm.auto import tqdm
from typing_extensions import override

from medrobust.callbacks.helpers.mlflow_logger_lookup import log_params_once, mlflow_logger
from medrobust.lightning_modules.classifier import TrainingStep
from medrobust.lightning_modules.features.distillation_losses import (
    DistillLayer,
    attention_transfer,
    feature_matching,
    kd_kl,
)
from medrobust.lightning_modules.features.feature_taps import capture, feature_map, pooled, resolve_tap
from medrobust.lightning_modules.features.linear_probe import fit_linear_probe
from medrobust.lightning_modules.features.teacher import Teacher, check_source, load_teacher
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.utilities.errors import InputError

#: the teacher's data settings recorded as params ``distill.teacher.data.*``
_DATA_KEYS = ("flag", "size", "path", "subsample", "subsample_seed", "shortcut")


class FeatureDistillation(Callback):
    """Distil a frozen teacher's intermediate representations (and optionally its logits) into the student.

    The teacher is any trained ``ClassifierModule`` checkpoint of the same task and class count, of any timm
    architecture: a file, a run id, ``runs:/<run_id>`` or ``mlflow:<experiment>/<run name>`` (the run's selected
    checkpoint: its logged model's, else its ``checkpoints/best.ckpt``), or a model (``models:/...``). It is loaded
    with ``weights_only=True``, kept on the callback (never in the student's
    ``state_dict``, its checkpoints or DDP), in eval mode without gradients, and sees the same training input as
    the student (``step.x``: adversarial images under PGD-AT, so distillation is robust distillation).

    Each entry of ``layers`` adds a loss term ``train/loss/<name>/<layer>`` (see
    :mod:`~medrobust.lightning_modules.features.distillation_losses`): ``mse``/``cosine`` feature matching through a
    trainable 1x1 adapter, ``attention`` transfer, or ``probe_kl``: per layer a linear probe on pooled features of
    each network, the teacher's fitted once at setup on data the teacher never trained on (``probe_data``) and frozen,
    the student's trained jointly; the loss is ``T^2 * KL(teacher probe || student probe)``. ``logit_weight`` adds
    Hinton's ``T^2``-scaled KL on the final logits (``train/loss/<name>/logits``). Adapters and student probes are
    auxiliary modules of the student (own parameter group, ``aux_lr``), saved for resume and left out when the
    checkpoint is loaded without this callback.

    Args:
        teacher: checkpoint path, ``runs:/<run_id>/<artifact>``, or an MLflow run id (tracking URI: the run's).
        layers: ``[{student: layer3, teacher: layer3, weight: 1.0, loss: probe_kl, adapter: true}]``; a bare
            string is a layer distilled into the same-named teacher layer with ``probe_kl``.
        logit_weight: weight of the final-logit KD term (0: none).
        temperature: ``T`` of the probe and logit KL terms.
        probe_data: data the teacher's probes are fitted on: ``"teacher"``, the validation split of the data the
            teacher's checkpoint records, out of sample for the teacher (a probe fitted on the few images a teacher
            memorised reads its memory, not its features); or ``"student"``, the student's training split, refused
            where that split carries a shortcut (the clean teacher's probes would learn the shortcut and pass it
            into the student).
        aux_lr: learning rate of adapters and student probes (default: the optimizer's).
        name: seam name and metric prefix.
    """

    def __init__(
        self,
        teacher: str,
        layers: list[dict[str, Any] | str] | None = None,
        logit_weight: float = 0.0,
        temperature: float = 4.0,
        probe_data: Literal["teacher", "student"] = "teacher",
        aux_lr: float | None = None,
        name: str = "distill",
    ) -> None:
        check_source(teacher)
        self.layers = [DistillLayer.parse(spec) for spec in layers or []]
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise InputError(f"Distillation layers need distinct names (set 'name:'), got {names}")
        if not self.layers and logit_weight <= 0:
            raise InputError("FeatureDistillation needs layers or a logit_weight > 0")
        if temperature <= 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        if probe_data not in ("teacher", "student"):
            raise InputError(f"probe_data must be 'teacher' or 'student', got {probe_data!r}")
        self.source, self.logit_weight, self.temperature = teacher, logit_weight, temperature
        self.probe_data, self.aux_lr, self.name = probe_data, aux_lr, name
        self.teacher: Teacher | None = None
        self._test_teacher: nn.Module | None = None
        self._teacher_probes: dict[str, nn.Linear] = {}
        self._step: TrainingStep | None = None
        self._cached: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    def init_ancestors(self) -> list[str]:
        """The teacher, by checkpoint MD5: the student's initial weights are drawn independently of the teacher's
        (:mod:`~medrobust.lightning_modules.nets.independent_init`)."""
        return [f"teacher:{self.teacher.md5 or self.teacher.run_id or self.source}"] if self.teacher is not None else []

    # ------------------------------------------------------------------------------------------ registration
    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Load the teacher and check it against the student: the ``medrobust`` command calls this before it creates
        the MLflow run, so a wrong teacher leaves no FAILED run (``setup`` calls it too, for other Trainers)."""
        if stage != "fit" or (self.teacher is not None and self.teacher.source == self.source):
            return
        logger = mlflow_logger(trainer)
        self.teacher = load_teacher(self.source, getattr(logger, "tracking_uri", None))
        self._check_compatible(pl_module)
        softmax_terms = self.logit_weight > 0 or any(layer.loss == "probe_kl" for layer in self.layers)
        if softmax_terms and pl_module.task != "multiclass":
            raise InputError("probe_kl and logit KD compare softmax distributions; for multi-label use mse/cosine")
        for layer in self.layers:
            resolve_tap(self.teacher.net.backbone, layer.teacher)
            resolve_tap(pl_module.net.backbone, layer.student)

    def scoring_teacher(self) -> nn.Module | None:
        """The teacher network for evaluation callbacks to score beside the student in a test
        (:class:`~medrobust.callbacks.ShortcutEvaluation` does): the one this fit distilled from, or, in a
        ``medrobust test`` whose config names this callback, its source loaded for the test; ``None`` otherwise."""
        return self._test_teacher

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "test" and self._test_teacher is None:
            logger = mlflow_logger(trainer)
            teacher = load_teacher(self.source, getattr(logger, "tracking_uri", None))
            self._test_teacher = teacher.net.to(trainer.strategy.root_device)
            if logger is not None and trainer.global_rank == 0:  # a name may now mean a retrained teacher: say which
                scored = {
                    f"{self.name}.teacher.scored.run_id": teacher.run_id,
                    f"{self.name}.teacher.scored.md5": teacher.md5,
                }
                log_params_once(logger, {k: v for k, v in scored.items() if v is not None})
        if stage != "fit":
            return
        self.check_inputs(trainer, pl_module, stage)
        self._check_same_teacher(trainer)
        device = trainer.strategy.root_device
        self.teacher.net.to(device)
        pl_module.request_features(self.name, [layer.student for layer in self.layers])
        student_chs, teacher_chs = self._channels(trainer, pl_module)
        for layer in self.layers:
            s, t = student_chs[layer.student], teacher_chs[layer.teacher]
            if layer.loss in ("mse", "cosine"):
                if layer.adapter:
                    pl_module.add_auxiliary_module(self._aux(layer, "adapter"), nn.Conv2d(s, t, 1), self.aux_lr)
                elif s != t:
                    raise InputError(
                        f"Layer {layer.name}: student {layer.student} has {s} channels, teacher {layer.teacher} {t}; "
                        "feature matching without an adapter needs equal channels (set adapter: true)"
                    )
            if layer.loss == "probe_kl":
                pl_module.add_auxiliary_module(
                    self._aux(layer, "probe"), nn.Linear(s, pl_module.num_classes), self.aux_lr
                )
        if any(layer.loss == "probe_kl" for layer in self.layers):
            self._fit_teacher_probes(trainer, pl_module, device)
        for layer in self.layers:
            pl_module.add_loss_term(f"{self.name}/{layer.name}", functools.partial(self._layer_term, pl_module, layer))
        if self.logit_weight > 0:
            pl_module.add_loss_term(f"{self.name}/logits", self._logit_term)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.release_features(self.name)
        for layer in self.layers:
            pl_module.remove_loss_term(f"{self.name}/{layer.name}")
            pl_module.remove_auxiliary_module(self._aux(layer, "adapter"))
            pl_module.remove_auxiliary_module(self._aux(layer, "probe"))
        pl_module.remove_loss_term(f"{self.name}/logits")
        self._test_teacher = self.teacher.net if self.teacher is not None else None  # scored in the test after fit
        self.teacher, self._teacher_probes, self._step, self._cached = None, {}, None, None

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if logger is None or trainer.global_rank != 0:
            return
        hp, data = self.teacher.hparams, self.teacher.data_hparams or {}
        params = {f"{self.name}.teacher.model_name": hp["model_name"], f"{self.name}.teacher.source": self.source}
        # what the source resolved to: the run that trained it and the bytes of its checkpoint
        resolved = {f"{self.name}.teacher.run_id": self.teacher.run_id, f"{self.name}.teacher.md5": self.teacher.md5}
        params |= {k: v for k, v in resolved.items() if v is not None}
        params |= {f"{self.name}.teacher.data.{k}": v for k, v in data.items() if k in _DATA_KEYS and v is not None}
        params[f"{self.name}.layers"] = ", ".join(
            f"{x.student}->{x.teacher}:{x.loss}*{x.weight:g}" for x in self.layers
        )
        log_params_once(logger, params)

    def _check_same_teacher(self, trainer: Trainer) -> None:
        """A resumed run goes on with the teacher it started with: ``mlflow:<experiment>/<name>`` resolves to the
        newest run of that name, which may since have been retrained. Rank zero reads the run; every process
        raises."""
        logger = mlflow_logger(trainer)
        problem = ""
        if logger is not None and trainer.global_rank == 0:
            resolved = {
                f"{self.name}.teacher.run_id": self.teacher.run_id,
                f"{self.name}.teacher.md5": self.teacher.md5,
            }
            problem = self._teacher_changed(logger, resolved)
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise InputError(problem)

    def _teacher_changed(self, logger: Any, resolved: dict[str, str | None]) -> str:
        """Why the teacher ``resolved`` is not the one the run's params record (empty when it is, or none is)."""
        logged = logger.experiment.get_run(logger.run_id).data.params
        md5_key, run_key = f"{self.name}.teacher.md5", f"{self.name}.teacher.run_id"
        if md5_key not in logged or logged[md5_key] == resolved[md5_key]:
            return ""
        return (
            f"This run was distilled from teacher {logged.get(run_key)} (checkpoint MD5 {logged[md5_key]}); "
            f"{self.source!r} now resolves to {resolved[run_key]} (MD5 {resolved[md5_key]}). Resume with the "
            f"first teacher: --trainer.callbacks.teacher=runs:/{logged.get(run_key)}/checkpoints/best.ckpt"
        )

    def _check_compatible(self, pl_module: LightningModule) -> None:
        hp = self.teacher.hparams
        mine = {"task": pl_module.task, "num_classes": pl_module.num_classes, "in_chans": pl_module.hparams.in_chans}
        theirs = {key: hp.get(key) for key in mine}
        if mine != theirs:
            raise InputError(f"Teacher {self.source!r} was trained for {theirs}, the student is {mine}")

    def _channels(self, trainer: Trainer, pl_module: LightningModule) -> tuple[dict[str, int], dict[str, int]]:
        """Channels of every tapped layer, from one forward of a blank image at the data's size."""
        size = getattr(getattr(trainer.datamodule, "spec", None), "size", 28)
        blank = torch.zeros(2, pl_module.hparams.in_chans, size, size)
        out = []
        student_names = [layer.student for layer in self.layers]
        teacher_names = [layer.teacher for layer in self.layers]
        for net, names in ((pl_module.net, student_names), (self.teacher.net, teacher_names)):
            with eval_mode(net), torch.no_grad(), capture(net.backbone, names) as features:
                net(blank.to(next(net.parameters()).device))
            out.append({k: feature_map(v, net.backbone).shape[1] for k, v in features.items()})
        return out[0], out[1]

    def _fit_teacher_probes(self, trainer: Trainer, pl_module: LightningModule, device: torch.device) -> None:
        images, labels = self._probe_split(trainer)
        names = sorted({x.teacher for x in self.layers if x.loss == "probe_kl"})
        pooled_features: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        net = self.teacher.net
        with torch.no_grad(), capture(net.backbone, names) as features:
            for start in tqdm(range(0, len(images), 256), desc="teacher probes: features", leave=False):
                net(images[start : start + 256].float().div(255).to(device))
                for n in names:
                    pooled_features[n].append(pooled(features[n], net.backbone).cpu())
        for n in names:
            self._teacher_probes[n] = fit_linear_probe(torch.cat(pooled_features[n]), labels, pl_module.num_classes).to(
                device
            )
        rank_zero_info(
            f"{type(self).__name__}: teacher probes for {names} fitted on {len(labels)} images "
            f"({'the teacher data validation split' if self.probe_data == 'teacher' else 'the student training split'})"
        )

    def _probe_split(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        if self.probe_data == "student":
            datamodule = trainer.datamodule
            shortcut = getattr(datamodule, "shortcut", None)
            if shortcut is not None and getattr(shortcut, "train", True):
                raise InputError(
                    "probe_data: student fits the teacher's probes on the student's training split, which carries a "
                    "shortcut: the probes would learn it and pass it into the student. Use probe_data: teacher"
                )
            dataset = datamodule.datasets["train"]
            return dataset.images, dataset.labels
        data = self.teacher.data_hparams
        if not data:
            raise InputError(f"Teacher {self.source!r} records no training data; use probe_data: student")
        from medrobust.datamodules.medmnist import MedMNISTDataModule

        accepted = set(inspect.signature(MedMNISTDataModule).parameters) - {"shifts", "download"}
        datamodule = MedMNISTDataModule(**{k: v for k, v in data.items() if k in accepted})
        datamodule.setup("fit")
        dataset = datamodule.datasets["val"]  # held out from the teacher's training: its probes fit out of sample
        return dataset.images, dataset.labels

    def _aux(self, layer: DistillLayer, kind: str) -> str:
        return f"{self.name}_{kind}_{layer.name}".replace(".", "_")

    # ------------------------------------------------------------------------------------------- the terms
    def _teacher_forward(self, step: TrainingStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's logits and taps on ``step.x``, computed once per training step for every term."""
        if self._step is not step:
            names = [x.teacher for x in self.layers]
            with torch.no_grad(), capture(self.teacher.net.backbone, names) as features:
                logits = self.teacher.net(step.x.detach())
            self._step, self._cached = step, (logits, dict(features))
        return self._cached

    def _layer_term(self, pl_module: LightningModule, layer: DistillLayer, step: TrainingStep) -> torch.Tensor:
        _, teacher_features = self._teacher_forward(step)
        s_backbone, t_backbone = pl_module.net.backbone, self.teacher.net.backbone
        student, teacher = step.features[layer.student], teacher_features[layer.teacher]
        if layer.loss == "probe_kl":
            s_logits = pl_module.auxiliary[self._aux(layer, "probe")](pooled(student, s_backbone))
            t_logits = self._teacher_probes[layer.teacher](pooled(teacher, t_backbone))
            return layer.weight * kd_kl(s_logits, t_logits, self.temperature)
        s_map, t_map = feature_map(student, s_backbone), feature_map(teacher, t_backbone)
        if layer.loss == "attention":
            return layer.weight * attention_transfer(s_map, t_map)
        if layer.adapter:
            s_map = pl_module.auxiliary[self._aux(layer, "adapter")](s_map)
        return layer.weight * feature_matching(s_map, t_map, layer.loss)

    def _logit_term(self, step: TrainingStep) -> torch.Tensor:
        teacher_logits, _ = self._teacher_forward(step)
        return self.logit_weight * kd_kl(step.logits, teacher_logits, self.temperature)
