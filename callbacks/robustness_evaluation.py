"""RobustnessEvaluation: accuracy under FGSM, PGD and AutoAttack over an eps grid, with the per-sample worst case, and
budget-free minimal distances (DeepFool, JSMA, bisection with PGD)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from medrobust.callbacks.evaluation.distance_tracker import DistanceTracker
from medrobust.callbacks.evaluation.evaluation_callback import EvaluationCallback, TestBatch, within
from medrobust.callbacks.helpers.figures import distance_figure, robustness_figure
from medrobust.callbacks.helpers.image_shape import image_shape
from medrobust.lightning_modules.attacks.attack_suite import (
    SOFTMAX_ONLY,
    AttackSpec,
    build_attack,
    check_attacks,
    default_attacks,
)
from medrobust.lightning_modules.attacks.masking_checks import (
    TALLIES,
    black_box_tallies,
    masking_verdict,
    white_box_tallies,
)
from medrobust.lightning_modules.attacks.min_distance import DistanceSettings
from medrobust.lightning_modules.attacks.threat import Threat, check_budget
from medrobust.lightning_modules.metrics.confusion import (
    CONSTANT_SHARE,
    accuracy,
    balanced_accuracy,
    confusion_from_predictions,
    empty_counts,
    near_constant,
    predictions,
    top_prediction_share,
    worst_case_predictions,
)
from medrobust.lightning_modules.metrics.metric_names import build_name
from medrobust.lightning_modules.nets.modes import eval_mode
from medrobust.utilities.console import own_line
from medrobust.utilities.errors import InputError

log = logging.getLogger(__name__)

WORST = "worst"


class RobustnessEvaluation(EvaluationCallback):
    """Attack the test split at every budget of a grid and report accuracy and balanced accuracy.

    Per attack, ``test/adv/<attack>/<threat>/{acc,bal_acc}`` (e.g. ``test/adv/pgd20/linf_8_255/acc``). Per budget, the
    **worst case**: a sample counts as robust only if it is classified correctly clean and under every attack at that
    budget, on the samples every one of those attacks saw (``autoattack_max_samples`` may limit them); logged as
    ``test/adv/worst/<threat>/{acc,bal_acc,n}``, and the source of the ``summary/adv_*`` numbers sweeps compare.

    The report ``robustness.json`` and ``plots/robustness.png`` (accuracy against eps, one panel per norm) go into the
    run; the settings are logged as ``robustness.*`` params. Results where one class gets at least
    ``constant_share`` of the predictions, more than its share of the labels, are flagged (tag
    ``robustness.near_constant``, and a warning): on an imbalanced test set a classifier that always answers the
    majority class keeps its accuracy under any attack, which is not robustness.

    Under DDP each rank attacks its share and the counts are summed on every rank, even one that received no batch;
    each sample counts once because the test loader does not pad (MedMNISTDataModule's does not).

    **Minimal distances** (``distance_attacks``; :mod:`~medrobust.lightning_modules.attacks.min_distance`): per test
    sample, the smallest perturbation DeepFool (L2), JSMA (L0, share of values changed) or a bisection over eps with
    PGD (L-inf) needed to change its prediction; a misclassified sample is at 0 (it needs none), one not flipped at
    ``inf``. Logged as ``test/adv/<attack>/<norm>_dist/{median,q25,q75,fooled,n,misclassified,undefined}``
    (``fooled``: the share of the correctly classified ones flipped; ``undefined``: DeepFool's 0/0 steps, counted as
    not flipped; a median of ``inf`` means more than half were not flipped), summarised as
    ``summary/adv_dist/<norm>/<attack>`` (the median), drawn in ``plots/min_distance.png`` as accuracy against the
    distance, with every value in ``robustness.json``. They need no budget, so runs compare without picking one, and
    run in fp32 whatever the trainer's precision.

    Budget attacks run inside the trainer's precision context (``precision: bf16-mixed`` attacks in bf16 autocast, as
    the clean test forward is), so a fast-path run is evaluated as it runs.

    Gradient-masking checks in the spirit of AutoAttack's (:mod:`~medrobust.lightning_modules.attacks.masking_checks`)
    on one global sample of test images, the first ``sanity_max_samples`` by index (inside ``max_samples``), counted
    per sample and summed over batches and processes: logged as tags ``robustness.check.*`` (with ``n`` and
    ``black_box_n``, the samples judged) and warned about when they fail.

    Args:
        attacks: any of ``"fgsm"``, ``"pgd"``, ``"autoattack"``, ``"square"``; default: fgsm, pgd and autoattack, or
            fgsm and pgd for a multi-label task (AutoAttack assumes a softmax classifier). Naming a softmax-only
            attack for a multi-label task is refused at setup, before training.
        linf_eps: L-inf budgets (floats or strings like ``"8/255"``).
        l2_eps: L2 budgets.
        pgd_steps: PGD steps.
        pgd_restarts: PGD random restarts; per sample, a restart that fools the model is kept.
        pgd_random_start: PGD's first start is a random point of the ball, drawn per image from ``seed`` and its
            dataset id (the same on any number of processes); ``False`` starts at the image. Either way FGSM and PGD
            keep, per sample, the first iterate that fools the model, not the last.
        autoattack_steps: APGD/FAB iterations in AutoAttack (Croce & Hein use 100).
        square_queries: Square's query budget (5000 in AutoAttack).
        max_samples: attack only the first ``max_samples`` test samples of the split, by index: the same images
            on any number of processes (``None``: all).
        autoattack_max_samples: a smaller limit for AutoAttack and Square, the expensive ones (the first samples too).
        constant_share: flag a result whose most predicted class gets at least this share of the predictions (and a
            larger share than that class has among the labels:
            :func:`~medrobust.lightning_modules.metrics.confusion.near_constant`).
        sanity_checks: run the gradient-masking checks.
        sanity_max_samples: run them on the first this many test samples by index (``None``: every attacked one);
            the black-box check runs Square and PGD on each, so its cost grows with this number.
        sanity_square_queries: query budget of the black-box check.
        seed: seed of random starts and of torchattacks' attacks.
        distance_attacks: any of ``"deepfool"``, ``"jsma"``, ``"min_linf"``; default ``["deepfool"]`` (cheap: a few
            steps per sample), none for a multi-label task (they assume a softmax classifier).
        distance: their settings (:class:`DistanceSettings`: DeepFool's steps and overshoot, JSMA's theta and gamma,
            the bisection's ``linf_max``, ``linf_bisections`` and ``linf_pgd_steps``).
        distance_max_samples: measure distances on the first this many test samples (JSMA's pair search is
            the costly one); ``None``: as ``max_samples``.
        allow_unusual_budget: take budgets :func:`~medrobust.lightning_modules.attacks.threat.check_budget` refuses.
    """

    def __init__(
        self,
        attacks: list[str] | None = None,
        linf_eps: list[float | str] | None = None,
        l2_eps: list[float | str] | None = None,
        pgd_steps: int = 20,
        pgd_restarts: int = 1,
        pgd_random_start: bool = True,
        autoattack_steps: int = 100,
        square_queries: int = 5000,
        max_samples: int | None = None,
        autoattack_max_samples: int | None = None,
        constant_share: float = CONSTANT_SHARE,
        sanity_checks: bool = True,
        sanity_square_queries: int = 300,
        sanity_max_samples: int | None = 256,
        seed: int = 0,
        distance_attacks: list[str] | None = None,
        distance: DistanceSettings | None = None,
        distance_max_samples: int | None = None,
        allow_unusual_budget: bool = False,
    ) -> None:
        super().__init__()
        if attacks is not None:
            check_attacks(attacks, "multiclass")
        self.distances = DistanceTracker(distance_attacks, distance, distance_max_samples)
        self.attacks = attacks
        linf = linf_eps if linf_eps is not None else ["1/255", "2/255", "4/255", "8/255"]
        l2 = l2_eps if l2_eps is not None else [0.25, 0.5]
        self.grid = [Threat.parse("linf", e) for e in linf] + [Threat.parse("l2", e) for e in l2]
        self.allow_unusual_budget = allow_unusual_budget
        if not allow_unusual_budget:
            for threat, written in zip(self.grid, [*linf, *l2], strict=True):
                check_budget(threat, written)
        self.pgd_steps, self.pgd_restarts = pgd_steps, pgd_restarts
        self.autoattack_steps, self.square_queries = autoattack_steps, square_queries
        self.max_samples = max_samples
        self.autoattack_max_samples = autoattack_max_samples
        self.constant_share = constant_share
        if sanity_max_samples is not None and (isinstance(sanity_max_samples, bool) or sanity_max_samples < 1):
            raise InputError(f"sanity_max_samples: a positive number of test samples or None, got {sanity_max_samples}")
        self.sanity_checks, self.sanity_square_queries = sanity_checks, sanity_square_queries
        self.sanity_max_samples = sanity_max_samples
        self.seed = seed
        self.pgd_random_start = pgd_random_start
        self.specs: list[AttackSpec] = []
        self._counts: dict[str, torch.Tensor] = {}
        self._seconds: dict[str, float] = {}
        self._seen = 0
        self._checks: dict[str, Any] = {}
        self._tallies = dict.fromkeys(TALLIES, 0.0)
        self._warned_order = False

    def check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The attacks against the task, the L2 budgets against the image size: before the ``medrobust`` command
        creates the run, and again in ``setup`` (before training, not after it)."""
        check_attacks(self.attacks if self.attacks is not None else default_attacks(pl_module.task), pl_module.task)
        if not self.allow_unusual_budget:
            for threat in self.grid:
                check_budget(threat, threat.eps, image_shape(trainer, pl_module))

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.check_inputs(trainer, pl_module, stage)
        attacks = self.attacks if self.attacks is not None else default_attacks(pl_module.task)
        self.distances.setup(pl_module.task)
        self.specs = [
            AttackSpec(attack, threat, self.pgd_steps if attack == "pgd" else 0, self.pgd_restarts)
            for attack in attacks
            for threat in self.grid
            if threat.eps > 0
        ]

    # ------------------------------------------------------------------------------------------------ test
    @override
    def start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen, self._checks, self._seconds = 0, {}, {}
        self._tallies = dict.fromkeys(TALLIES, 0.0)
        self.distances.reset()
        task, c = pl_module.task, pl_module.num_classes
        self._fns = {
            spec.label: build_attack(
                spec, task, c, self.autoattack_steps, self.square_queries, self.seed, self.pgd_random_start
            )
            for spec in self.specs
        }
        self._threats: dict[Threat, list[str]] = {}
        for spec in self.specs:
            self._threats.setdefault(spec.threat, []).append(spec.label)
        # Every key exists on every rank from the start, so every rank takes part in every reduction.
        keys = ["clean", *self._fns, *(f"{WORST}/{t.label}" for t in self._threats)]
        self._counts = {key: empty_counts(task, c) for key in keys}

    @override
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, batch: TestBatch) -> None:
        if batch.split != self.splits[0]:  # the in-distribution test split only
            return
        x, y, ids, batch_idx = batch.x, batch.y, batch.ids, batch.index
        limit = within(ids, self.max_samples, len(x))
        if limit == 0:
            return
        x, y, ids = x[:limit], y[:limit], ids[:limit] if ids is not None else None
        self._seen += limit
        expensive = within(ids, self.autoattack_max_samples, limit)
        checked = self._sanity_count(ids, limit) if self.sanity_checks else 0
        net, task = pl_module.net, pl_module.task
        with torch.inference_mode(False), trainer.precision_plugin.forward_context():
            x, y = x.clone(), y.clone()
            if checked > 0:
                self._tally(white_box_tallies(net, x[:checked], y[:checked], task))
            torch.manual_seed(self.seed + batch_idx)
            preds = {"clean": self._predict(net, x, y, "clean", pl_module)}
            for spec in self.specs:
                k = expensive if spec.attack in SOFTMAX_ONLY else limit
                if k > 0:
                    start = time.perf_counter()
                    x_adv = self._fns[spec.label](net, x[:k], y[:k], ids[:k] if ids is not None else None)
                    preds[spec.label] = self._predict(net, x_adv, y[:k], spec.label, pl_module)
                    self._seconds[spec.name] = self._seconds.get(spec.name, 0.0) + time.perf_counter() - start
            for threat, labels in self._threats.items():
                k = min(len(preds.get(label, ())) for label in labels)
                if k > 0:
                    worst = worst_case_predictions([preds["clean"][:k], *(preds[lb][:k] for lb in labels)], y[:k], task)
                    self._add(f"{WORST}/{threat.label}", worst, y[:k], pl_module)
            if checked > 0 and task != "multilabel":
                first = ids[:checked] if ids is not None else None
                self._tally(self._black_box_tallies(net, x[:checked], y[:checked], pl_module.num_classes, first))
            for attack, seconds in self.distances.measure(net, x, y, ids, pl_module.num_classes).items():
                self._seconds[attack] = self._seconds.get(attack, 0.0) + seconds
        if trainer.is_global_zero:
            total = trainer.num_test_batches[0] if trainer.num_test_batches else "?"
            spent = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self._seconds.items())
            log.info("robustness: batch %d/%s, %d samples attacked (%s)", batch_idx + 1, total, self._seen, spent)

    def _predict(
        self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, key: str, pl_module: Any
    ) -> torch.Tensor:
        """Predictions on ``x``, added to ``key``'s counts."""
        with eval_mode(net):
            pred = predictions(net(x), pl_module.task)
        self._add(key, pred, y, pl_module)
        return pred

    def _add(self, key: str, pred: torch.Tensor, y: torch.Tensor, pl_module: Any) -> None:
        self._counts[key] = (
            self._counts[key] + confusion_from_predictions(pred, y, pl_module.task, pl_module.num_classes).cpu()
        )

    def _tally(self, counts: dict[str, float]) -> None:
        for name, value in counts.items():
            self._tallies[name] += value

    def _sanity_count(self, ids: torch.Tensor | None, limit: int) -> int:
        """How many leading samples of this batch the masking checks take: those inside the global sample; a loader
        without sample ids (one that shuffles) gives the first ``sanity_max_samples`` this process sees."""
        if ids is not None or self.sanity_max_samples is None:
            return within(ids, self.sanity_max_samples, limit)
        if not self._warned_order:
            rank_zero_warn("masking checks: the test loader has no sample ids; they judge the first samples it gives")
            self._warned_order = True
        return max(0, min(limit, self.sanity_max_samples - int(self._tallies["n"])))

    def _black_box_tallies(
        self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, ids: torch.Tensor | None
    ) -> dict:
        linf = [t.eps for t in self.grid if t.norm == "linf" and t.eps > 0]
        if not linf:
            return {}
        eps, steps, queries = max(linf), self.pgd_steps, self.sanity_square_queries
        return black_box_tallies(net, x, y, num_classes, eps, steps, queries, self.seed, ids)

    @override
    def finish(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any] | None:
        if not self._counts:
            return None
        by_key = {spec.label: spec for spec in self.specs}
        worst_keys = {f"{WORST}/{threat.label}": threat for threat in self._threats}
        results = []
        for key, counts in self._counts.items():
            total = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
            n = int(total[0].sum()) if pl_module.task == "multilabel" else int(total.sum())
            if n == 0:  # an expensive attack limited away entirely
                continue
            share = top_prediction_share(total)
            row = {"key": key, "acc": accuracy(total), "bal_acc": float(balanced_accuracy(total)), "n": n}
            row |= {"top_pred_share": share, "near_constant": near_constant(total, self.constant_share)}
            spec = by_key.get(key)
            threat = worst_keys.get(key, spec.threat if spec is not None else None)
            if key in worst_keys:
                row |= {"attack": WORST, "norm": threat.norm, "eps": threat.eps}
            elif spec is not None:
                row |= {"attack": spec.name, "norm": threat.norm, "eps": threat.eps}
            else:
                row |= {"attack": "clean", "norm": None, "eps": 0.0}
            results.append(row)
            if key != "clean":
                metrics = {"acc": row["acc"], "bal_acc": row["bal_acc"]}
                if row["attack"] == WORST:
                    metrics |= {"n": n, "top_pred_share": share}
                for stat, value in metrics.items():
                    if row["attack"] == WORST:
                        name = build_name("adv_worst", threat=threat.label, stat=stat)
                    else:
                        name = build_name("adv_attack", attack=row["attack"], threat=threat.label, stat=stat)
                    pl_module.log(name, float(value), sync_dist=False)
        distances = self.distances.finish(trainer, pl_module)
        if self.sanity_checks:  # every rank takes part, even one that saw no batch
            local = torch.tensor([self._tallies[name] for name in TALLIES], dtype=torch.float64)
            tallies = trainer.strategy.reduce(local.to(pl_module.device), reduce_op="sum").cpu()
            self._checks = masking_verdict(dict(zip(TALLIES, tallies.tolist(), strict=True)))
        failed = [name for name, ok in self._checks.items() if isinstance(ok, bool) and not ok]
        if failed:
            rank_zero_warn(f"Gradient-masking checks failed: {failed}; robust accuracy may be overestimated.")
        constant = [r["key"] for r in results if r["near_constant"] and r["key"] != "clean"]  # clean: the module's
        if constant and trainer.is_global_zero:
            own_line(
                f"medrobust: warning: near-constant predictions under attack (one class gets >= "
                f"{self.constant_share:.0%} of them, more than its share of the labels) in {constant}: accuracy there "
                "measures the class balance of the test set, not robustness.",
                sys.stderr,
            )
        return {"settings": self.settings(), "results": results, "checks": self._checks, "distances": distances}

    @override
    def artifacts(self, trainer: Trainer, report: dict[str, Any]) -> dict[str, Any]:
        figures = {"plots/robustness.png": robustness_figure(report["results"])}
        if report["distances"]:
            figures["plots/min_distance.png"] = distance_figure(report["distances"])
        constant = [r["key"] for r in report["results"] if r["near_constant"]]
        tags = {f"robustness.check.{name}": value for name, value in report["checks"].items()}
        tags["robustness.near_constant"] = ",".join(constant) or "none"
        params = {f"robustness.{k}": v for k, v in self.settings().items()}
        return {"json_files": {"robustness.json": report}, "figures": figures, "tags": tags, "params": params}

    def settings(self) -> dict[str, Any]:
        return {
            "attacks": sorted({spec.attack for spec in self.specs}),
            "grid": [f"{t.norm}:{t.eps:.6g}" for t in self.grid],
            "pgd_steps": self.pgd_steps,
            "pgd_restarts": self.pgd_restarts,
            "pgd_random_start": self.pgd_random_start,
            "iterate": "first_success",
            "autoattack_steps": self.autoattack_steps,
            "square_queries": self.square_queries,
            "max_samples": self.max_samples,
            "autoattack_max_samples": self.autoattack_max_samples,
            "seed": self.seed,
            "sanity_max_samples": self.sanity_max_samples if self.sanity_checks else None,
        } | self.distances.describe()
