"""DetectionEvaluation: can the model tell in-distribution test images from OOD, corrupted and adversarial ones?"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.evaluation.evaluation_callback import EvaluationCallback, TestBatch, within
from medrobust.callbacks.evaluation.outputs import gather_rows
from medrobust.callbacks.helpers.detection_figures import roc_figure, score_histograms
from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat import Threat, check_budget, parse_eps
from medrobust.lightning_modules.attacks.threat_model import LinfThreat
from medrobust.lightning_modules.detection import (
    DETECTORS,
    Energy,
    FeatureEnsemble,
    Mahalanobis,
    MaxSoftmax,
    adaptive_objective,
    calibrate,
    detection_metrics,
    parse_targets,
)
from medrobust.lightning_modules.features.feature_taps import feature_names, resolve_tap
from medrobust.lightning_modules.metrics.metric_names import build_name
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)

NOISE = [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01]


class DetectionEvaluation(EvaluationCallback):
    """At test, fit OOD/adversarial detectors on the training split and score the in-distribution test split against
    every target.

    Detectors (:mod:`medrobust.lightning_modules.detection`; higher score = more in-distribution): ``msp``,
    ``energy``, ``mahalanobis`` (per tapped layer ``mahalanobis_<layer>``, and ``mahalanobis`` = the best single layer
    chosen on validation data) and ``ensemble`` (Lee et al.'s logistic regression over the layer scores). The
    Mahalanobis Gaussians are fitted by streaming over the training split; under DDP each process reads its share and
    the sums are added over processes, so the fit is exactly the one-process fit. The preprocessing magnitude (from
    ``noise``), the best layer and the ensemble's weights are chosen on the validation split against ``fit_on``
    outliers, never on the test targets: ``fgsm:<eps>`` (FGSM images of the validation split, Lee et al.'s setting
    for unseen OOD and attacks) or ``ood:<flag>`` (another dataset's validation split). Every process calibrates on
    the whole validation split, so all hold the same detector.

    Targets: ``ood:<flag>`` and ``corruption:<name>@<k>`` are test splits the datamodule serves (``--data.shifts``);
    ``fgsm:<eps>``, ``pgd:<eps>`` and ``adaptive:<eps>`` (PGD on cross-entropy plus, once a sample is misclassified,
    ``adaptive_weight`` times the ensemble's in-distribution log-odds: an attacker who knows the detector) are L-inf
    attacks on the in-distribution test images. With ``adversarial_pairs="successful"`` (Lee et al.) an adversarial
    target keeps only the images the model classifies correctly clean and wrongly after the attack, and is compared
    with those same clean images.

    Logs ``test/detect/<detector>/<target>/<metric>`` (:data:`~medrobust.lightning_modules.detection.METRICS` and
    ``n_in``/``n_out``), e.g. ``test/detect/ensemble/pgd20_linf_8_255/auroc``; ``detection.json`` (settings,
    calibration, table); ``plots/detection_roc.png`` and ``plots/detection_scores.png``; params ``detection.*``.

    Args:
        targets: what to detect (see above).
        detectors: any of :data:`DETECTORS` (default: all). ``ensemble`` and ``adaptive:`` targets need the
            Mahalanobis fit, which is then made even if ``mahalanobis`` is not listed.
        layers: tap names for Mahalanobis (default: the backbone's ``feature_info`` names).
        noise: preprocessing magnitudes to choose from, pixel units (0 = none).
        fit_on: the validation outliers of the calibration.
        pgd_steps: steps of ``pgd`` and ``adaptive`` targets (step ``2.5 * eps / steps``).
        adaptive_weight: weight of the detector term in the adaptive attack.
        adversarial_pairs: ``"successful"`` or ``"all"``.
        shrinkage: covariance shrinkage (0: pseudo-inverse); see :class:`ClassGaussians`.
        energy_temperature: temperature of the energy score.
        max_samples: score the first this many samples of each test split, by index: the same images on any number
            of processes (``None``: all).
        seed: seed of the attacks' randomness.
        allow_unusual_budget: take attack budgets :func:`~medrobust.lightning_modules.attacks.threat.check_budget`
            refuses.
    """

    def __init__(
        self,
        targets: list[str],
        detectors: list[str] | None = None,
        layers: list[str] | None = None,
        noise: list[float] | None = None,
        fit_on: str = "fgsm:8/255",
        pgd_steps: int = 20,
        adaptive_weight: float = 1.0,
        adversarial_pairs: str = "successful",
        shrinkage: float = 0.0,
        energy_temperature: float = 1.0,
        max_samples: int | None = None,
        seed: int = 0,
        allow_unusual_budget: bool = False,
    ) -> None:
        super().__init__()
        self.detectors = list(detectors) if detectors is not None else list(DETECTORS)
        unknown = [d for d in self.detectors if d not in DETECTORS]
        if unknown or not self.detectors:
            raise InputError(f"Unknown detectors {unknown}; valid: {list(DETECTORS)}")
        self.targets = parse_targets(list(targets), pgd_steps)
        self.layers = layers
        self.noise = [float(n) for n in (noise if noise is not None else NOISE)]
        if not self.noise or any(n < 0 for n in self.noise):
            raise InputError(f"noise must be a non-empty list of magnitudes >= 0, got {noise}")
        kind, _, arg = fit_on.partition(":")
        if kind not in ("fgsm", "ood") or not arg:
            raise InputError(f"fit_on must be 'fgsm:<eps>' or 'ood:<flag>', got {fit_on!r}")
        self.fit_on, self.fit_on_eps = fit_on, parse_eps(arg) if kind == "fgsm" else 0.0
        if not allow_unusual_budget:
            budgets = [(t.eps, t.spec) for t in self.targets if t.eps > 0] + [(self.fit_on_eps, fit_on)]
            for eps, written in budgets:
                check_budget(Threat("linf", eps), written)
        if adversarial_pairs not in ("successful", "all"):
            raise InputError(f"adversarial_pairs must be 'successful' or 'all', got {adversarial_pairs!r}")
        self.adversarial_pairs = adversarial_pairs
        self.pgd_steps, self.adaptive_weight = pgd_steps, adaptive_weight
        self.shrinkage, self.energy_temperature = shrinkage, energy_temperature
        self.max_samples, self.seed = max_samples, seed
        self.needs_mahalanobis = bool({"mahalanobis", "ensemble"} & set(self.detectors)) or any(
            t.kind == "adaptive" for t in self.targets
        )
        self._scores: dict[str, Any] = {}
        self._mahalanobis: Mahalanobis | None = None
        self._ensemble: FeatureEnsemble | None = None

    # ----------------------------------------------------------------------------------------------------- setup
    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The task, the feature layers and the split targets, before the ``medrobust`` command creates the run (and
        in ``setup``)."""
        if pl_module.task == "multilabel":
            raise InputError("DetectionEvaluation scores single-label classifiers (softmax over classes)")
        backbone = pl_module.net.backbone
        self._layers = list(self.layers) if self.layers else feature_names(backbone)
        if self.needs_mahalanobis and not self._layers:
            raise InputError(f"{type(backbone).__name__} lists no feature names; pass DetectionEvaluation(layers=...)")
        for name in self._layers:
            resolve_tap(backbone, name)  # before training, not after it
        names = getattr(trainer.datamodule, "test_split_names", None)  # None before the run: checked in setup
        for target in self.targets:
            if names is not None and target.kind == "split" and target.split not in names:
                raise InputError(
                    f"Detection target {target.spec!r} needs the test split {target.split}; add "
                    f"'{target.spec}' to --data.shifts (the datamodule serves {names})"
                )

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.check_inputs(trainer, pl_module, stage)

    @override
    def start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        names = self.splits
        for target in self.targets:
            if target.kind == "split" and target.split not in names:
                raise InputError(
                    f"Detection target {target.spec!r} needs the test split {target.split}; add "
                    f"'{target.spec}' to --data.shifts (the datamodule serves {names})"
                )
            if target.kind == "split" and len(datamodule.shifted[target.split]) == 0:
                raise InputError(f"Detection target {target.spec!r} has no samples")
        net, device = pl_module.net, pl_module.device
        self._net = net
        baselines = {"msp": MaxSoftmax(net), "energy": Energy(net, self.energy_temperature)}
        self._baselines = {name: detector for name, detector in baselines.items() if name in self.detectors}
        self._calibration: dict[str, Any] = {}
        self._mahalanobis = self._ensemble = None
        if self.needs_mahalanobis:
            with torch.inference_mode(False):
                self._fit(trainer, pl_module, datamodule, device)
        self._attacks = {t.label: self._attack(t) for t in self.targets if t.adversarial}
        keys = self._keys()
        self._in = {k: [torch.zeros(0)] for k in keys}
        self._out = {t.label: {k: [torch.zeros(0)] for k in keys} for t in self.targets}
        self._pair_in = {t.label: {k: [torch.zeros(0)] for k in keys} for t in self.targets if t.adversarial}

    def _fit(self, trainer: Trainer, pl_module: LightningModule, datamodule: Any, device: torch.device) -> None:
        net = pl_module.net
        self._mahalanobis = Mahalanobis(net, self._layers, pl_module.num_classes, self.shrinkage)
        reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
        self._mahalanobis.fit(datamodule.eval_dataloader("train"), reduce, progress=trainer.is_global_zero)
        val = datamodule.datasets["val"]
        images_in = val.images.float() / 255
        if self.fit_on.startswith("fgsm:"):
            fgsm = PGD(LinfThreat(self.fit_on_eps), steps=1, alpha=self.fit_on_eps, random_start=False)
            images_out = torch.cat(
                [
                    fgsm.perturb(net, images_in[i : i + 256].to(device), val.labels[i : i + 256].to(device)).cpu()
                    for i in range(0, len(images_in), 256)
                ]
            )
        else:
            images_out = datamodule.other_dataset(self.fit_on.partition(":")[2], "val").float() / 255
        self._ensemble = FeatureEnsemble(self._mahalanobis)
        self._calibration = calibrate(
            self._ensemble, images_in, images_out, self.noise, progress=trainer.is_global_zero
        )
        log.info(
            "detection: noise %g, best layer %s (validation, %s)",
            self._mahalanobis.noise,
            self._mahalanobis.layer,
            self.fit_on,
        )

    def _attack(self, target: Any) -> PGD:
        threat = LinfThreat(target.eps)
        if target.kind == "fgsm":
            return PGD(threat, steps=1, alpha=target.eps, random_start=False)
        objective = adaptive_objective(self._ensemble, self.adaptive_weight) if target.kind == "adaptive" else None
        return PGD(threat, steps=target.steps, random_start=False, objective=objective)

    def _keys(self) -> list[str]:
        keys = list(self._baselines)
        if self._mahalanobis is not None:
            keys += [f"mahalanobis_{layer}" for layer in self._mahalanobis.layers] + ["mahalanobis", "ensemble"]
        return keys

    # ------------------------------------------------------------------------------------------------------ test
    def _score(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every detector's scores of ``x``, and the predictions."""
        if self._mahalanobis is None:
            with eval_mode(self._net):
                logits = self._net(x)
        else:
            logits, layer_scores = self._mahalanobis.logits_and_layer_scores(x)
        scores = {name: detector.from_logits(logits) for name, detector in self._baselines.items()}
        if self._mahalanobis is not None:
            for i, layer in enumerate(self._mahalanobis.layers):
                scores[f"mahalanobis_{layer}"] = layer_scores[:, i]
            scores["mahalanobis"] = layer_scores[:, self._mahalanobis.layers.index(self._mahalanobis.layer)]
            scores["ensemble"] = self._ensemble.combine(layer_scores)
        return {k: v.detach().float().cpu() for k, v in scores.items()}, logits.argmax(dim=1).cpu()

    @override
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, batch: TestBatch) -> None:
        split, ids, batch_idx = batch.split, batch.ids, batch.index
        split_targets = [t for t in self.targets if t.split == split]
        if split != "id" and not split_targets:
            return
        limit = within(ids, self.max_samples, len(batch.x))
        if limit == 0:
            return
        with torch.inference_mode(False):
            x, y = batch.x[:limit].clone(), batch.y[:limit].clone().flatten()
            scores, pred = self._score(x)
            for target in split_targets:
                self._add(self._out[target.label], scores)
            if split != "id":
                return
            self._add(self._in, scores)
            for target in (t for t in self.targets if t.adversarial):
                torch.manual_seed(self.seed + batch_idx)
                x_adv = self._attacks[target.label].perturb(pl_module.net, x, y)
                adv_scores, adv_pred = self._score(x_adv)
                keep = torch.ones(len(y), dtype=torch.bool)
                if self.adversarial_pairs == "successful":
                    keep = (pred == y.cpu()) & (adv_pred != y.cpu())
                self._add(self._out[target.label], adv_scores, keep)
                self._add(self._pair_in[target.label], scores, keep)
        if trainer.is_global_zero and split == "id":
            log.info("detection: id batch %d scored against %d targets", batch_idx + 1, len(self.targets))

    @staticmethod
    def _add(into: dict[str, list[torch.Tensor]], scores: dict[str, torch.Tensor], keep: Any = None) -> None:
        for key, value in scores.items():
            into[key].append(value if keep is None else value[keep])

    @override
    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any] | None:
        if not hasattr(self, "_in"):
            return None
        device = pl_module.device

        def gathered(rows: list[torch.Tensor]) -> torch.Tensor:
            return gather_rows(trainer, torch.cat(rows), device)

        score_in = {k: gathered(v) for k, v in self._in.items()}
        table: dict[str, dict[str, dict[str, float]]] = {}
        scores: dict[str, Any] = {"targets": {}}
        for target in self.targets:
            out = {k: gathered(v) for k, v in self._out[target.label].items()}
            pair = {k: gathered(v) for k, v in self._pair_in[target.label].items()} if target.adversarial else None
            reference_scores = pair if pair is not None else score_in
            scores["targets"][target.label] = {
                "in": {k: v.tolist() for k, v in reference_scores.items()},
                "out": {k: v.tolist() for k, v in out.items()},
            }
            for key, values in out.items():
                reference = reference_scores[key]
                if len(values) == 0 or len(reference) == 0:
                    rank_zero_warn(f"Detection target {target.spec}: no samples to score (e.g. no successful attack)")
                    table.setdefault(key, {})[target.label] = {"n_in": len(reference), "n_out": len(values)}
                    continue
                metrics = detection_metrics(reference, values)
                table.setdefault(key, {})[target.label] = metrics
                for stat, value in metrics.items():
                    name = build_name("detect", detector=key, target=target.label, stat=stat)
                    pl_module.log(name, float(value), sync_dist=False)
        self._scores = scores
        return {"settings": self.settings(), "calibration": self._calibration, "table": table}

    @override
    def artifacts(self, trainer: Trainer, report: dict[str, Any]) -> dict[str, Any]:
        main = [k for k in DETECTORS if k in self._keys()]
        figures = {
            "plots/detection_roc.png": roc_figure(self._scores, main),
            "plots/detection_scores.png": score_histograms(self._scores, main),
        }
        params = {f"detection.{k}": v for k, v in self.settings().items()}
        return {"json_files": {"detection.json": report}, "figures": figures, "params": params}

    def settings(self) -> dict[str, Any]:
        settings = {
            "targets": [t.spec for t in self.targets],
            "detectors": self.detectors,
            "layers": getattr(self, "_layers", self.layers),
            "noise_grid": self.noise,
            "fit_on": self.fit_on,
            "pgd_steps": self.pgd_steps,
            "adaptive_weight": self.adaptive_weight,
            "adversarial_pairs": self.adversarial_pairs,
            "shrinkage": self.shrinkage,
            "max_samples": self.max_samples,
            "seed": self.seed,
        }
        if self._mahalanobis is not None:
            settings |= {"noise": self._mahalanobis.noise, "best_layer": self._mahalanobis.layer}
        return settings
