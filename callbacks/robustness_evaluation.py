"""RobustnessEvaluation: accuracy under FGSM, PGD and AutoAttack over an eps grid, with gradient-masking checks."""

from __future__ import annotations

import logging
import time
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from callbacks.figures import robustness_figure
from callbacks.mlflow_logger_lookup import mlflow_logger
from lightning_modules.components.attack_suite import AttackSpec, build_attack
from lightning_modules.components.confusion import accuracy, balanced_accuracy, confusion_counts
from lightning_modules.components.frozen_mode import attack_mode, eval_mode
from lightning_modules.components.metric_names import metric_name
from lightning_modules.components.pgd import bce_sum, cross_entropy_sum
from lightning_modules.components.threat_model import parse_eps

log = logging.getLogger(__name__)


class RobustnessEvaluation(Callback):
    """Attack the test split at every budget of a grid and report accuracy and balanced accuracy.

    Metrics ``test/adv/<attack>/<norm>_<eps>/{acc,bal_acc}`` (e.g. ``test/adv/pgd20/linf_8_255/acc``), the report
    ``robustness.json`` and the figure ``plots/robustness.png`` (accuracy against eps, one panel per norm) go into the
    run; the attack settings are logged as ``robustness.*`` params. Works under ``medrobust test --ckpt_path ...`` and
    at the end of ``fit``. Attacks run with gradients enabled even under the Trainer's inference mode.

    Under DDP each rank attacks its share and the confusion counts are summed, so each sample counts once when the
    test loader does not pad (MedMNISTDataModule's does not).

    Gradient-masking checks in the spirit of AutoAttack's, logged as tags ``robustness.check.*`` and warned about when
    they fail: outputs are logits, not probabilities; the model is deterministic; input gradients are non-zero; and a
    black-box Square attack does not beat white-box PGD at the largest L-inf budget on the first batch.

    Args:
        attacks: any of ``"fgsm"``, ``"pgd"``, ``"autoattack"``, ``"square"``.
        linf_eps: L-inf budgets (floats or strings like ``"8/255"``); 0 is clean accuracy.
        l2_eps: L2 budgets.
        pgd_steps: PGD steps.
        pgd_restarts: PGD random restarts (per sample, the worst case is kept).
        autoattack_steps: APGD/FAB iterations in AutoAttack (Croce & Hein use 100).
        square_queries: Square's query budget (5000 in AutoAttack).
        max_samples: attack only the first ``max_samples`` test samples seen by each process (``None``: all).
        autoattack_max_samples: a smaller limit for AutoAttack and Square, the expensive ones.
        sanity_checks: run the gradient-masking checks.
        sanity_square_queries: query budget of the black-box check.
        val_eps: when set, also PGD-``val_steps`` on the first ``val_batches`` validation batches each epoch of fit,
            logged as ``val/adv/...`` (a cheap budget to watch robustness while training).
        val_steps: PGD steps during validation.
        val_batches: validation batches attacked.
        seed: seed of random starts and of torchattacks' attacks.
    """

    def __init__(
        self,
        attacks: list[str] | None = None,
        linf_eps: list[float | str] | None = None,
        l2_eps: list[float | str] | None = None,
        pgd_steps: int = 20,
        pgd_restarts: int = 1,
        autoattack_steps: int = 100,
        square_queries: int = 5000,
        max_samples: int | None = None,
        autoattack_max_samples: int | None = None,
        sanity_checks: bool = True,
        sanity_square_queries: int = 300,
        val_eps: float | str | None = None,
        val_steps: int = 5,
        val_batches: int = 2,
        seed: int = 0,
    ) -> None:
        self.attacks = attacks if attacks is not None else ["fgsm", "pgd", "autoattack"]
        linf = linf_eps if linf_eps is not None else ["1/255", "2/255", "4/255", "8/255"]
        l2 = l2_eps if l2_eps is not None else [0.25, 0.5]
        self.grid = [("linf", parse_eps(e)) for e in linf] + [("l2", parse_eps(e)) for e in l2]
        self.pgd_steps, self.pgd_restarts = pgd_steps, pgd_restarts
        self.autoattack_steps, self.square_queries = autoattack_steps, square_queries
        self.max_samples = max_samples
        self.autoattack_max_samples = autoattack_max_samples
        self.sanity_checks, self.sanity_square_queries = sanity_checks, sanity_square_queries
        self.val_eps = parse_eps(val_eps) if val_eps is not None else None
        self.val_steps, self.val_batches = val_steps, val_batches
        self.seed = seed
        self.specs = [
            AttackSpec(attack, norm, eps, pgd_steps if attack == "pgd" else 0)
            for attack in self.attacks
            for norm, eps in self.grid
            if eps > 0
        ]
        self._counts: dict[str, torch.Tensor] = {}
        self._seconds: dict[str, float] = {}
        self._seen = 0
        self._checks: dict[str, Any] = {}
        self._report: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------ test
    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._counts, self._seen, self._checks, self._seconds = {}, 0, {}, {}
        task, c = pl_module.task, pl_module.num_classes
        self._fns = {
            spec.label: build_attack(
                spec, task, c, self.pgd_restarts, self.autoattack_steps, self.square_queries, self.seed
            )
            for spec in self.specs
        }

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0 or (self.max_samples is not None and self._seen >= self.max_samples):
            return
        x, y = batch
        if self.max_samples is not None:
            x, y = x[: self.max_samples - self._seen], y[: self.max_samples - self._seen]
        self._seen += len(x)
        net = pl_module.net
        with torch.inference_mode(False):
            x, y = x.clone(), y.clone()
            if self.sanity_checks and batch_idx == 0:
                self._checks |= _white_box_checks(net, x, y, pl_module.task)
            torch.manual_seed(self.seed + batch_idx)
            self._add("clean", net, x, y, pl_module)
            expensive_done = (
                self.autoattack_max_samples is not None and self._seen - len(x) >= self.autoattack_max_samples
            )
            for spec in self.specs:
                start = time.perf_counter()
                if spec.attack in ("autoattack", "square"):
                    if expensive_done:
                        continue
                    if self.autoattack_max_samples is not None:
                        keep = self.autoattack_max_samples - (self._seen - len(x))
                        x_adv = self._fns[spec.label](net, x[:keep], y[:keep])
                        self._add(spec.label, net, x_adv, y[:keep], pl_module)
                        self._time(spec.attack, start)
                        continue
                x_adv = self._fns[spec.label](net, x, y)
                self._add(spec.label, net, x_adv, y, pl_module)
                self._time(spec.attack, start)
            if self.sanity_checks and batch_idx == 0:
                self._checks |= self._black_box_check(net, x, y, pl_module)
        if trainer.is_global_zero:
            total = trainer.num_test_batches[0] if trainer.num_test_batches else "?"
            spent = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self._seconds.items())
            log.info("robustness: batch %d/%s, %d samples attacked (%s)", batch_idx + 1, total, self._seen, spent)

    def _time(self, attack: str, start: float) -> None:
        self._seconds[attack] = self._seconds.get(attack, 0.0) + time.perf_counter() - start

    def _add(self, key: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, pl_module: Any) -> None:
        with eval_mode(net):
            counts = confusion_counts(net(x), y, pl_module.task, pl_module.num_classes)
        self._counts[key] = self._counts.get(key, 0) + counts.cpu()

    def _black_box_check(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, pl_module: Any) -> dict:
        linf = [eps for norm, eps in self.grid if norm == "linf" and eps > 0]
        if not linf or pl_module.task == "multilabel":
            return {}
        eps = max(linf)
        accs = {}
        for attack, kwargs in (("pgd", {"steps": self.pgd_steps}), ("square", {})):
            spec = AttackSpec(attack, "linf", eps, **kwargs)
            fn = build_attack(
                spec, pl_module.task, pl_module.num_classes, square_queries=self.sanity_square_queries, seed=self.seed
            )
            x_adv = fn(net, x, y)
            with eval_mode(net):
                accs[attack] = float((net(x_adv).argmax(1) == y).float().mean())
        return {
            "black_box_not_better": accs["square"] >= accs["pgd"] - 0.05,
            "black_box_square_acc": accs["square"],
            "black_box_pgd_acc": accs["pgd"],
        }

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._counts:
            return
        results = []
        for key, counts in self._counts.items():
            total = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
            acc, bal = accuracy(total), float(balanced_accuracy(total))
            results.append({"key": key, "acc": acc, "bal_acc": bal, "n": _n(total, pl_module.task)})
            if key != "clean":
                pl_module.log(metric_name("test", "adv", key, "acc"), acc, sync_dist=False)
                pl_module.log(metric_name("test", "adv", key, "bal_acc"), bal, sync_dist=False)
        by_key = {spec.label: spec for spec in self.specs}
        for row in results:
            spec = by_key.get(row["key"])
            row |= {
                "attack": spec.attack if spec else "clean",
                "norm": spec.norm if spec else None,
                "eps": spec.eps if spec else 0.0,
            }
        self._report = {"settings": self.settings(), "results": results, "checks": self._checks}

    @override
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._report is None:
            return
        failed = [name for name, ok in self._checks.items() if isinstance(ok, bool) and not ok]
        if failed:
            rank_zero_warn(f"Gradient-masking checks failed: {failed}; robust accuracy may be overestimated.")
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        client, run_id = logger.experiment, logger.run_id
        client.log_dict(run_id, self._report, "robustness.json")
        fig = robustness_figure(self._report["results"])
        client.log_figure(run_id, fig, "plots/robustness.png")
        plt.close(fig)
        for name, value in self._checks.items():
            client.set_tag(run_id, f"robustness.check.{name}", str(value))
        try:
            log_params = getattr(logger, "log_params", logger.log_hyperparams)
            log_params({f"robustness.{k}": v for k, v in self.settings().items()})
        except Exception as err:  # MLflow refuses to change a logged param; the report holds the settings anyway
            log.warning("robustness settings not logged as params: %s", err)

    def settings(self) -> dict[str, Any]:
        return {
            "attacks": self.attacks,
            "grid": [f"{n}:{e:.6g}" for n, e in self.grid],
            "pgd_steps": self.pgd_steps,
            "pgd_restarts": self.pgd_restarts,
            "autoattack_steps": self.autoattack_steps,
            "square_queries": self.square_queries,
            "max_samples": self.max_samples,
            "autoattack_max_samples": self.autoattack_max_samples,
            "seed": self.seed,
        }

    @property
    def report(self) -> dict[str, Any] | None:
        """The last test's report (as logged to ``robustness.json``)."""
        return self._report

    # ------------------------------------------------------------------------------------- during fit
    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.val_eps is None or trainer.sanity_checking or batch_idx >= self.val_batches:
            return
        spec = AttackSpec("pgd", "linf", self.val_eps, self.val_steps)
        fn = build_attack(spec, pl_module.task, pl_module.num_classes, seed=self.seed)
        with torch.inference_mode(False):
            x, y = batch[0].clone(), batch[1].clone()
            x_adv = fn(pl_module.net, x, y)
            with torch.no_grad():
                counts = confusion_counts(pl_module.net(x_adv), y, pl_module.task, pl_module.num_classes)
        pl_module.log(
            metric_name("val", "adv", spec.label, "acc"),
            accuracy(counts),
            batch_size=len(x),
            on_epoch=True,
            sync_dist=True,
        )


def _n(counts: torch.Tensor, task: str) -> int:
    return int(counts[0].sum()) if task == "multilabel" else int(counts.sum())


def _white_box_checks(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> dict[str, Any]:
    loss_fn = bce_sum if task == "multilabel" else cross_entropy_sum
    with attack_mode(net):
        x = x.clone().requires_grad_(True)
        out = net(x)
        (grad,) = torch.autograd.grad(loss_fn(out, y), x)
        out = out.detach()
    with eval_mode(net):
        again = net(x)
    rows_sum_to_one = torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4)
    looks_like_probs = bool((out >= 0).all() and (out <= 1).all() and rows_sum_to_one)
    nonzero = float((grad.flatten(1).abs().amax(1) > 0).float().mean())
    return {
        "outputs_are_logits": not looks_like_probs,
        "deterministic": bool(torch.allclose(out, again, atol=1e-5)),
        "nonzero_input_grad": nonzero >= 0.99,
        "nonzero_input_grad_fraction": nonzero,
    }
