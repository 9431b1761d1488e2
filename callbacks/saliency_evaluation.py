"""SaliencyEvaluation: do the model's saliency maps fall on the evidence region? Alignment and stability per method."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.evaluation.outputs import gather_rows
from medrobust.callbacks.evaluation.reporting import report
from medrobust.callbacks.evaluation.saliency_cascade import Kept, cascade_metrics, cascade_similarity
from medrobust.callbacks.helpers.saliency_figures import cascade_figure, saliency_grid
from medrobust.lightning_modules.attacks.threat import parse_eps
from medrobust.lightning_modules.metrics.metric_names import build_name
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.lightning_modules.saliency.attributions import (
    EXPLAINED,
    METHODS,
    AttributionSettings,
    Explainer,
    check_methods,
    deeplift_blockers,
)
from medrobust.lightning_modules.saliency.randomisation import initial_network, map_similarity
from medrobust.lightning_modules.saliency.saliency_metrics import (
    BOUNDED,
    COLUMNS,
    chance_and_ceiling,
    energy_in_mask,
    max_sensitivity,
    normalised,
    perturbations,
    pointing_game,
    rank_stability,
    summarise,
    topk_iou,
)
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)


class SaliencyEvaluation(Callback):
    """Score each saliency method's maps against the test split's evidence masks, at test time.

    Needs test splits with masks (:meth:`~medrobust.datamodules.medmnist.MedMNISTDataModule.masked_splits`):
    ``--data.evidence``
    (an injected, label-carrying pattern), a file's own ``test_masks``, or a localised ``--data.shortcut`` (its
    marker masks on the ``shortcut/*`` splits). On ``num_samples`` seeded images with a non-empty mask per split, each
    method's map of the ``target`` logit is scored (:mod:`~medrobust.lightning_modules.saliency.saliency_metrics`):

    * ``energy``: the share of the map's positive mass inside the mask;
    * ``pointing``: the pointing game, tie-aware (a flat map does not score);
    * ``iou``: IoU of the map's top ``topk`` share of pixels with the mask (tied pixels share the last places);
    * each of the three beside its chance level and ceiling (``<score>_chance``, ``iou_ceiling``; energy's and
      pointing's ceiling is 1) and normalised, ``<score>_norm`` = (x - chance) / (ceiling - chance): 0 at chance,
      1 at the best a map can do against that mask (a 4x4 marker caps top-10% IoU at 0.21 at 28 px);
    * ``sensitivity`` and ``rank_corr``: on the first ``stability_samples`` of them, the largest relative change of
      the map over ``stability_perturbations`` uniform perturbations of L-inf radius ``stability_radius``, and the
      mean Spearman correlation of the map before and after.

    Logged as ``test/saliency/<method>/<metric>`` for the in-distribution split and
    ``test/<split>/saliency/<method>/<metric>`` for the others (``test/shortcut/aligned/saliency/gradient/energy``),
    each also on the correctly classified images only (``<metric>_correct``), energy and pointing also per class
    (``energy_class<k>``: a model may look at one class's evidence only); ``summary/saliency_<metric>/<method>``
    and the report ``saliency.json``. The figure ``plots/saliency_<split>.png`` shows the same first ``grid_images``
    images, their masks and every method's map, so two runs' grids compare side by side in MLflow.

    Under DDP each process explains its share of the chosen images (the same images, with the same perturbations, as
    in one process) and the per-image scores are gathered, so the numbers do not depend on the number of processes.

    Args:
        methods: any of ``gradient``, ``integrated_gradients``, ``occlusion``, ``deeplift``, ``gradcam``; default all,
            without ``deeplift`` (with a warning) where captum has no DeepLIFT rule for the network's nonlinearities.
            Naming ``deeplift`` for such a network is refused at setup, before training.
        splits: which masked test splits (``id``, ``shortcut/aligned``, ...); default every masked split.
        num_samples: images per split (with a non-empty mask), drawn with ``seed``.
        batch_size: images explained at once.
        target: explain the true ``label``'s output or the ``prediction``'s.
        explain: which output: ``logit``, or ``margin``, a binary two-logit head's signed margin ``z_target -
            z_other`` (:class:`~medrobust.lightning_modules.saliency.signed_margin.SignedMargin`: the softmax depends
            on the difference only, and the two classes' maps are then exact negatives); ``auto``: ``margin`` for two
            classes, else ``logit``. Logged as param ``saliency.explain``.
        topk: the share of pixels of the IoU's top-k.
        stability_samples: how many of the images get the stability metrics (each costs ``stability_perturbations``
            more maps per method).
        stability_perturbations: perturbations per image.
        stability_radius: their L-inf radius in pixel units (``"2/255"``).
        ig_steps: integrated gradients' steps.
        occlusion_window: occlusion's patch side in pixels (default ``max(2, size // 7)``).
        occlusion_stride: its stride (default half the window).
        gradcam_layer: the backbone layer of Grad-CAM (default: the deepest with at least 4x4 positions).
        grid_images: images in the figure.
        randomised_control: also score the same architecture at its initial, untrained weights (timm's
            initialisation, seeded, zero-init residual gammas revived:
            :mod:`~medrobust.lightning_modules.saliency.randomisation`) on the same images and targets, logged as
            ``<metric>_randomised`` for energy, pointing and IoU, and how alike the trained and randomised maps are,
            ``spearman_randomised`` and ``ssim_randomised`` (absolute maps): the model-randomisation sanity check of
            Adebayo et al. (2018). An architecture can put mass on a region before any training (timm's ResNet-18 at
            28 px favours the top-left corner), so a trained model's alignment means something only above its
            control's, and maps that stay alike after randomisation do not show what the model learned.
        cascade_samples: on this many of the first split's images, the cascading randomisation of Adebayo et al.:
            the trained network's top-level modules at their initial weights one more at a time, from the head to
            the stem, logged as ``cascade_<k>_<module>_{spearman,ssim}`` against the trained maps (``k`` the number
            of modules randomised) and drawn in ``plots/saliency_cascade.png``; 0 skips it.
        seed: seed of the image choice, the perturbations and the control's weights.
    """

    def __init__(
        self,
        methods: list[str] | None = None,
        splits: list[str] | None = None,
        num_samples: int = 128,
        batch_size: int = 32,
        target: str = "label",
        topk: float = 0.1,
        stability_samples: int = 32,
        stability_perturbations: int = 4,
        stability_radius: float | str = "2/255",
        ig_steps: int = 32,
        occlusion_window: int | None = None,
        occlusion_stride: int | None = None,
        gradcam_layer: str | None = None,
        grid_images: int = 6,
        randomised_control: bool = True,
        seed: int = 0,
        explain: str = "auto",
        cascade_samples: int = 16,
    ) -> None:
        self.methods = None if methods is None else check_methods(methods)
        if explain not in ("auto", *EXPLAINED):
            raise InputError(f"explain must be one of auto, {', '.join(EXPLAINED)}, got {explain!r}")
        self.explain = explain
        if target not in ("label", "prediction"):
            raise InputError(f"target must be 'label' or 'prediction', got {target!r}")
        if num_samples < 1 or batch_size < 1 or stability_samples < 0 or stability_perturbations < 1:
            raise InputError("num_samples, batch_size and stability_perturbations must be >= 1")
        if cascade_samples < 0:
            raise InputError(f"cascade_samples: a number of images >= 0 (0 skips the cascade), got {cascade_samples}")
        self.cascade_samples = cascade_samples
        if not 0.0 < topk <= 1.0:
            raise InputError(f"topk must be a share of the pixels in (0, 1], got {topk}")
        self.splits, self.num_samples, self.batch_size, self.target = splits, num_samples, batch_size, target
        self.topk, self.stability_samples = topk, stability_samples
        self.stability_perturbations, self.stability_radius = stability_perturbations, parse_eps(stability_radius)
        self.attribution = AttributionSettings(ig_steps, occlusion_window, occlusion_stride, gradcam_layer)
        self.grid_images, self.seed, self.randomised_control = grid_images, seed, randomised_control
        self.explainers: dict[str, Explainer] = {}
        self._control: dict[str, Explainer] = {}
        self._report: dict[str, Any] | None = None
        self._grids: dict[str, plt.Figure] = {}

    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The task before the ``medrobust`` command creates the run; the evidence masks and split names once the
        Trainer has its data (``setup``)."""
        if pl_module.task == "multilabel":
            raise InputError("SaliencyEvaluation explains one class per image; multi-label tasks are not supported")
        if self.explain == "margin" and pl_module.num_classes != 2:
            raise InputError(f"explain: margin needs a two-logit head; this model has {pl_module.num_classes} classes")
        datamodule = trainer.datamodule
        if datamodule is None:  # before the run: the Trainer has no data yet (checked again in setup)
            return
        localised = getattr(getattr(datamodule, "shortcut", None), "kind", None) in ("patch", "text")
        if not hasattr(datamodule, "masked_splits") or not (datamodule.masked_splits() or localised):
            raise InputError(
                "SaliencyEvaluation needs test images with evidence masks: --data.evidence (an injected, "
                "label-carrying pattern), a data file with test_masks, or a localised --data.shortcut (patch, text)"
            )
        names = getattr(datamodule, "test_split_names", None)
        unknown = [n for n in self.splits or [] if names is not None and n not in names]
        if unknown:
            raise InputError(f"SaliencyEvaluation splits {unknown} are not test splits of the data; it serves {names}")

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.check_inputs(trainer, pl_module, stage)
        datamodule = trainer.datamodule
        methods = self.methods
        if methods is None:
            blockers = deeplift_blockers(pl_module.net)
            methods = [m for m in METHODS if m != "deeplift" or not blockers]
            if blockers:
                rank_zero_warn(f"SaliencyEvaluation: deeplift left out; captum has no DeepLIFT rule for {blockers}")
        explain = self.explain if self.explain != "auto" else "margin" if pl_module.num_classes == 2 else "logit"
        self.attribution = replace(self.attribution, explain=explain)
        shape = (datamodule.in_chans, datamodule.spec.size, datamodule.spec.size)
        # built now, so an unsupported method or an unknown layer is refused before training
        self.explainers = {m: Explainer(pl_module.net, m, shape, self.attribution) for m in methods}

    # ------------------------------------------------------------------------------------------------ test
    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        available = trainer.datamodule.masked_splits()
        default = [name for name, ds in available.items() if ds.masks.any()]  # shortcut/absent has none
        names = self.splits if self.splits is not None else default
        unknown = [n for n in names if n not in available]
        if unknown or not names:
            raise InputError(f"No evidence masks for test splits {unknown or names}; masked splits: {list(available)}")
        self._report, self._grids = {"settings": self.settings(), "splits": {}}, {}
        self._control, self._initial = {}, None
        if self.randomised_control or self.cascade_samples:
            self._initial = initial_network(pl_module.net, pl_module.hparams, self.seed).to(pl_module.device)
        if self.randomised_control:
            self._control = {method: self._twin(self._initial, method) for method in self.explainers}
        for k, name in enumerate(names):
            self._report["splits"][name] = self._evaluate(
                trainer, pl_module, name, available[name], with_cascade=k == 0
            )
        for name, split in self._report["splits"].items():
            for method, values in split["methods"].items():
                for metric, value in values.items():
                    if isinstance(value, float) and not math.isnan(value):
                        where = "" if name == "id" else f"{name}/"
                        key = build_name("saliency", where=where, method=method, stat=metric)
                        pl_module.log(key, value, sync_dist=False)

    def _twin(self, net: torch.nn.Module, method: str) -> Explainer:
        """``method`` on another network of the same architecture, reading the same Grad-CAM layer."""
        explainer = self.explainers[method]
        settings = replace(self.attribution, gradcam_layer=explainer.layer or self.attribution.gradcam_layer)
        return Explainer(net, method, explainer.image_shape, settings)

    def _evaluate(
        self, trainer: Trainer, pl_module: LightningModule, name: str, dataset: Any, with_cascade: bool = False
    ) -> dict[str, Any]:
        chosen = self.choose(dataset.masks)
        mine = chosen[trainer.global_rank :: trainer.world_size]
        rows = {method: [torch.zeros(0, len(COLUMNS))] for method in self.explainers}
        control = {method: [torch.zeros(0, len(COLUMNS))] for method in self._control}
        alike = {method: [torch.zeros(0, 2)] for method in self._control}
        kept: Kept = {method: [] for method in self.explainers}  # the cascade's images and their trained maps
        position = {int(i): p for p, i in enumerate(chosen)}
        for start in range(0, len(mine), self.batch_size):
            index = mine[start : start + self.batch_size]
            stable = torch.tensor([position[int(i)] < self.stability_samples for i in index])
            inputs = self._inputs(pl_module, dataset, index)  # one forward for the model and its control
            trained = self._explain(inputs, index, stable, self.explainers)
            for method, (scores, _) in trained.items():
                rows[method].append(scores)
            none = torch.zeros(len(index), dtype=torch.bool)
            for method, (scores, maps) in self._explain(inputs, index, none, self._control).items():
                control[method].append(scores)
                similar = map_similarity(trained[method][1], maps)
                alike[method].append(torch.stack([similar["spearman"], similar["ssim"]], 1).cpu())
            early = torch.tensor([position[int(i)] < self.cascade_samples for i in index])
            if with_cascade and early.any():
                keep = early.nonzero().flatten().to(inputs[0].device)
                for method, (_, maps) in trained.items():
                    kept[method].append((inputs[0][keep], inputs[3][keep], maps[keep]))
        out = {"n": len(chosen), "n_without_mask": int((~dataset.masks.flatten(1).any(1)).sum()), "methods": {}}
        for method in self.explainers:
            table = gather_rows(trainer, torch.cat(rows[method]), pl_module.device)
            out["methods"][method] = summarise(table)
            if method in control:
                table = gather_rows(trainer, torch.cat(control[method]), pl_module.device)
                randomised = summarise(table)
                out["methods"][method] |= {
                    f"{m}_randomised": randomised[m] for m in (*BOUNDED, *(f"{b}_norm" for b in BOUNDED))
                }
                similar = gather_rows(trainer, torch.cat(alike[method]), pl_module.device)
                out["methods"][method] |= {
                    "spearman_randomised": float(similar[:, 0].nanmean()) if len(similar) else math.nan,
                    "ssim_randomised": float(similar[:, 1].nanmean()) if len(similar) else math.nan,
                }
        if with_cascade and self.cascade_samples:
            out["cascade"] = cascade_similarity(trainer, pl_module, self._initial, kept, self._twin)
            for method, stages in out["cascade"].items():
                out["methods"][method] |= cascade_metrics(stages)
            if trainer.is_global_zero:
                self._grids["cascade"] = cascade_figure(out["cascade"])
        out["gradcam_layer"] = getattr(self.explainers.get("gradcam"), "layer", None)
        out["indices"] = chosen.tolist()
        if trainer.is_global_zero and self.grid_images > 0:
            self._grids[name] = self._grid(pl_module, dataset, chosen[: self.grid_images], name)
        return out

    def choose(self, masks: torch.Tensor) -> torch.Tensor:
        """Up to ``num_samples`` indices of images with a non-empty mask, drawn with ``seed``, in ascending order."""
        nonempty = masks.flatten(1).any(1).nonzero().flatten()
        order = torch.randperm(len(nonempty), generator=torch.Generator().manual_seed(self.seed))
        return nonempty[order[: self.num_samples]].sort().values

    def _inputs(self, pl_module: LightningModule, dataset: Any, index: torch.Tensor):
        x = (dataset.images[index].float() / 255).to(pl_module.device)
        y = dataset.labels[index].to(pl_module.device)
        with eval_mode(pl_module.net):
            pred = pl_module.net(x).argmax(1)
        target = y if self.target == "label" else pred
        return x, y, pred, target, dataset.masks[index].to(pl_module.device)

    def _explain(
        self,
        inputs: tuple[torch.Tensor, ...],
        index: torch.Tensor,
        stable: torch.Tensor,
        explainers: dict[str, Explainer],
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per method, one row of :data:`COLUMNS` per image (NaN where not computed) and the maps; ``inputs`` from
        :meth:`_inputs`."""
        x, y, pred, target, masks = inputs
        out = {}
        for method, explainer in explainers.items():
            maps = explainer(x, target)
            column = {
                "energy": energy_in_mask(maps, masks),
                "pointing": pointing_game(maps, masks),
                "iou": topk_iou(maps, masks, self.topk),
                "correct": (pred == y).float(),
                "label": y.float(),
            }
            column |= chance_and_ceiling(masks, self.topk)
            for score in BOUNDED:
                ceiling = column.get(f"{score}_ceiling", 1.0)
                column[f"{score}_norm"] = normalised(column[score], column[f"{score}_chance"], ceiling)
            scores = torch.full((len(x), len(COLUMNS)), math.nan)
            for name, values in column.items():
                scores[:, COLUMNS.index(name)] = values.float().cpu()
            if stable.any():
                keep = stable.nonzero().flatten().to(x.device)
                sensitivity, rank_corr = self._stability(explainer, x[keep], target[keep], index[stable], maps[keep])
                scores[stable, COLUMNS.index("sensitivity")] = sensitivity
                scores[stable, COLUMNS.index("rank_corr")] = rank_corr
            out[method] = (scores, maps)
        return out

    def _stability(
        self, explainer: Explainer, x: torch.Tensor, target: torch.Tensor, index: torch.Tensor, base: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Max sensitivity and rank stability of the maps ``base`` (already computed on ``x``)."""
        # each image's perturbations come from its own seed, so they do not depend on the batch or the process
        noise = [
            perturbations(x[i], self.stability_radius, self.stability_perturbations, self._generator(int(index[i])))
            for i in range(len(x))
        ]
        perturbed = [torch.stack([noise[i][j] for i in range(len(x))]) for j in range(self.stability_perturbations)]

        def explain(inputs: torch.Tensor) -> torch.Tensor:
            return explainer(inputs, target)

        sensitivity = max_sensitivity(explain, x, perturbed, base=base)
        return sensitivity.cpu(), rank_stability(explain, x, perturbed, base=base).cpu()

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def _grid(self, pl_module: LightningModule, dataset: Any, index: torch.Tensor, name: str) -> plt.Figure:
        x, y, pred, target, masks = self._inputs(pl_module, dataset, index)
        maps = {method: explainer(x, target).cpu() for method, explainer in self.explainers.items()}
        title = f"{name}: {type(pl_module.net.backbone).__name__ if hasattr(pl_module.net, 'backbone') else ''}"
        return saliency_grid(x.cpu(), masks.cpu(), maps, y.cpu(), pred.cpu(), title)

    @override
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        figures = {f"plots/saliency_{name.replace('/', '_')}.png": fig for name, fig in self._grids.items()}
        if self._report is None:
            report(trainer, figures=figures)  # nothing to write; the figures are closed
            return
        gradcam = self.explainers.get("gradcam")
        tags = {"saliency.gradcam_layer": gradcam.layer} if gradcam is not None else {}
        params = {f"saliency.{k}": v for k, v in self.settings().items()}
        report(
            trainer,
            json_files={"saliency.json": self._report},
            figures=figures,
            tags=tags,
            params=params,
            config_key=f"callbacks.{type(self).__name__}",
        )

    def settings(self) -> dict[str, Any]:
        return {
            "methods": list(self.explainers),
            "num_samples": self.num_samples,
            "target": self.target,
            "explain": self.attribution.explain,
            "topk": self.topk,
            "stability_samples": self.stability_samples,
            "stability_perturbations": self.stability_perturbations,
            "stability_radius": self.stability_radius,
            "ig_steps": self.attribution.ig_steps,
            "occlusion": list(self.explainers["occlusion"].window) if "occlusion" in self.explainers else None,
            "randomised_control": self.randomised_control,
            "cascade_samples": self.cascade_samples,
            "seed": self.seed,
        }

    @property
    def report(self) -> dict[str, Any] | None:
        """The last test's report (as logged to ``saliency.json``)."""
        return self._report
