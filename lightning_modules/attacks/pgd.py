"""Projected gradient descent on a bare network, for any threat model and loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medrobust.lightning_modules.attacks.threat_model import ThreatModel
from medrobust.lightning_modules.losses import LossFn, cross_entropy_sum
from medrobust.lightning_modules.metrics.confusion import errors
from medrobust.lightning_modules.nets.modes import attack_mode
from medrobust.utilities.errors import InputError


class PGD:
    """Maximise ``loss_fn(net(x'), target)`` over the threat model's ball by projected gradient ascent.

    Input gradients come from ``torch.autograd.grad``, so parameter ``.grad`` is never touched; the network runs in
    eval mode and every submodule's mode is restored afterwards. ``steps=1, alpha=1.25 * eps, random_start=True`` is
    FGSM with a random start (Wong et al. 2020).

    Args:
        threat: the allowed perturbations.
        steps: ascent steps.
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.).
        random_start: start from a random point of the ball rather than ``x``.
        restarts: independent random starts. Per sample, a restart that fools the model is kept (AutoAttack's rule:
            the highest-loss restart can still be classified correctly with 3+ classes), and later restarts attack
            only the samples no restart has fooled yet. Among restarts that fool none, or as many labels of a
            multi-label sample, the highest loss is kept. Needs label targets (class indices, or 0/1 per label).
        loss_fn: ``(logits, target) -> summed loss``; cross-entropy by default.
        objective: ``(net, x_adv, target) -> summed loss`` to ascend instead of ``loss_fn(net(x_adv), target)``, for
            attacks on more than the logits (an adaptive attack on a detector's features as well). Restarts still
            rank by ``loss_fn``.
        task: ``"multiclass"`` or ``"multilabel"``: how restarts decide whether a sample is fooled.
        keep_first_success: per sample, return the first iterate (the start included) that fools the model, not the
            last one: a later step can undo a success, so the last iterate overstates robust accuracy. For a
            multi-label task, the first iterate with the most wrong labels. A sample never fooled gets the last.
            The image itself is offered first, so a sample misclassified already stays so. Costs one or two
            forward passes more per run (the final iterate's; the image's when the start is elsewhere). Evaluation
            wants it; adversarial training (Madry et al.) uses the last iterate.

    Example:
        >>> from medrobust.lightning_modules.attacks.threat_model import LinfThreat
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
        >>> x_adv = PGD(LinfThreat("8/255"), steps=3).perturb(net, x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        alpha: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss_fn: LossFn = cross_entropy_sum,
        task: str = "multiclass",
        objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        keep_first_success: bool = False,
    ) -> None:
        if steps < 1 or restarts < 1:
            raise InputError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        if keep_first_success and objective is not None:
            raise InputError(
                "keep_first_success judges the classifier alone; an attack with an objective keeps the last"
            )
        self.threat = threat
        self.steps = steps
        self.alpha = alpha if alpha is not None else 2.5 * threat.eps / steps
        self.random_start = random_start
        self.restarts = restarts
        self.loss_fn = loss_fn
        self.task = task
        self.objective = objective
        self.keep_first_success = keep_first_success

    def perturb(
        self, net: nn.Module, x: torch.Tensor, target: torch.Tensor, x_init: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Adversarial images for ``x`` (detached, within the ball and [0, 1]); ``x_init`` overrides the first start."""
        if not isinstance(self.threat.eps, torch.Tensor) and self.threat.eps == 0:
            return x.detach().clone()
        with attack_mode(net):
            x, target = x.detach().clone(), target.detach().clone()
            first = x_init.detach() if x_init is not None else None
            best = self._run(net, x, target, first)
            if self.restarts == 1:
                return best
            best_err, best_loss = self._score(net, best, target)
            for _ in range(self.restarts - 1):
                todo = (best_err < self._max_errors(target)).nonzero().flatten()
                if len(todo) == 0:
                    break
                x_adv = self._run(net, x[todo], target[todo], None)
                err, loss = self._score(net, x_adv, target[todo])
                better = (err > best_err[todo]) | ((err == best_err[todo]) & (loss > best_loss[todo]))
                keep = todo[better]
                best[keep], best_err[keep], best_loss[keep] = x_adv[better], err[better], loss[better]
            return best

    def _run(self, net: nn.Module, x: torch.Tensor, target: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
        if start is not None:
            x_adv = self.threat.project(start.clone(), x)
        else:
            x_adv = self.threat.random_init(x) if self.random_start else x.clone()
        kept = _FirstSuccess(x_adv, self.task) if self.keep_first_success else None
        if kept is not None and not torch.equal(x_adv, x):
            kept.offer(net, x, None, target)  # the image itself first: one misclassified already stays so
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            if self.objective is not None:
                loss, logits = self.objective(net, x_adv, target), None
            else:
                logits = net(x_adv)
                loss = self.loss_fn(logits, target)
            if kept is not None:
                kept.offer(net, x_adv.detach(), logits, target)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.threat.project(self.threat.step(x_adv.detach(), grad, self.alpha), x)
        if kept is None:
            return x_adv.detach()
        kept.offer(net, x_adv.detach(), None, target)
        return kept.best

    def _score(self, net: nn.Module, x_adv: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: how many labels are wrong, and the loss."""
        with torch.no_grad():
            logits = net(x_adv)
            loss = torch.stack([self.loss_fn(logits[i : i + 1], target[i : i + 1]) for i in range(len(logits))])
            return errors(logits, target, self.task), loss

    def _max_errors(self, target: torch.Tensor) -> int:
        return target.shape[1] if self.task == "multilabel" else 1


class _FirstSuccess:
    """Per sample, the first iterate with the most wrong labels seen so far: for a single-label task the first that
    fools the model; a sample never fooled gets the last iterate (the highest loss reached), as without tracking."""

    def __init__(self, start: torch.Tensor, task: str) -> None:
        self.best = start.detach().clone()
        self.wrong = torch.full((len(start),), -1, dtype=torch.long, device=start.device)
        self.task = task

    def offer(self, net: nn.Module, x_adv: torch.Tensor, logits: torch.Tensor | None, target: torch.Tensor) -> None:
        with torch.no_grad():
            logits = net(x_adv) if logits is None else logits.detach()
            wrong = errors(logits, target, self.task)
        better = (wrong > self.wrong) | ((wrong == 0) & (self.wrong <= 0))  # none wrong yet: follow the ascent
        self.best[better] = x_adv[better]
        self.wrong = torch.maximum(wrong, self.wrong)
