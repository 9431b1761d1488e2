"""DeepFool (Moosavi-Dezfooli et al. 2016): the minimal L2 perturbation that flips a prediction, batched.

At every step the classifier is linearised around the current image and the image moves to the nearest linearised
decision boundary; it stops once the prediction differs from the label. All images of a batch step together (one
backward pass per class and step for the whole batch; per-sample Jacobians are exact because the network runs in
eval mode, where samples do not interact). Two ways to overshoot the boundary by ``(1 + overshoot)``:

* ``"total"`` (default; the authors' reference code): the image is ``x + (1 + overshoot) * r_total``, the sum of the
  steps so far, clipped to [0, 1].
* ``"step"``: torchattacks' ``DeepFool`` (3.3.0): every step is overshot and clipped on its own. Where the network
  bends away from its linearisation, the steps shrink geometrically and a sample can stall just short of the boundary
  until the step limit (on a small tanh network in the tests, 11 of 21 samples flipped this way, 18 with
  ``"total"``). ``tests/test_min_distance.py`` checks this mode against torchattacks on the same model and inputs
  (equal images).
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.lightning_modules.nets.modes import attack_mode
from medrobust.utilities.errors import InputError


def class_jacobian(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), jacobian (N, C, *x.shape[1:]))`` of every class logit with respect to each sample's input."""
    x = x.detach().requires_grad_(True)
    logits = net(x)
    wide = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits under autocast: the geometry in fp32
    logits = logits.to(wide)
    rows = [
        torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k + 1 < logits.shape[1])[0]
        for k in range(logits.shape[1])
    ]
    return logits.detach(), torch.stack(rows, 1).to(wide)


def deepfool(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 50,
    overshoot: float = 0.02,
    overshoot_on: str = "total",
    stuck: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images: each sample moved until its prediction is not ``y`` (or ``steps`` are spent).

    Samples misclassified from the start are returned unchanged. ``overshoot_on``: ``"total"`` or ``"step"`` (see the
    module docstring). A sample whose step is 0/0 (the gradient of the logit difference to its nearest boundary
    vanishes, as in a dead-ReLU region) stops where it is, and is marked ``True`` in ``stuck`` (a bool tensor of the
    batch's length, filled in place) when one is given: DeepFool found no direction, which is not a distance.
    """
    if steps < 1 or overshoot < 0 or overshoot_on not in ("total", "step"):
        raise InputError(
            f"DeepFool needs steps >= 1, overshoot >= 0 and overshoot_on 'total' or 'step'; got {steps}, {overshoot}, "
            f"{overshoot_on!r}"
        )
    x_adv = x.detach().clone()
    r_total = torch.zeros_like(x_adv)
    active = torch.arange(len(x), device=x.device)
    with attack_mode(net):
        for _ in range(steps):
            if len(active) == 0:
                break
            logits, jac = class_jacobian(net, x_adv[active])
            label = y[active]
            still = logits.argmax(1) == label
            active, logits, jac, label = active[still], logits[still], jac[still], label[still]
            if len(active) == 0:
                break
            rows = torch.arange(len(active), device=x.device)
            f_diff = logits - logits[rows, label][:, None]  # (n, C): f_k - f_y, 0 at k = y
            w_diff = jac - jac[rows, label][:, None]  # (n, C, ...)
            norms = w_diff.flatten(2).norm(dim=2)
            ratio = f_diff.abs() / norms
            ratio = ratio.nan_to_num(nan=float("inf"))  # 0/0 for a class tied with the label: not a boundary
            ratio[rows, label] = float("inf")  # the label itself is not a boundary
            nearest = ratio.argmin(1)
            f_k, w_k, n_k = f_diff[rows, nearest], w_diff[rows, nearest], norms[rows, nearest]
            flat = ~(n_k > 0)  # zero (or NaN) gradient difference: no step to take
            if flat.any():
                if stuck is not None:
                    stuck[active[flat]] = True
                keep = ~flat
                active, f_k, w_k, n_k = active[keep], f_k[keep], w_k[keep], n_k[keep]
                if len(active) == 0:
                    break
            delta = (f_k.abs() / n_k**2).view(-1, *[1] * (x.ndim - 1)) * w_k
            if overshoot_on == "step":
                x_adv[active] = (x_adv[active] + (1 + overshoot) * delta).clamp(0, 1).to(x_adv.dtype)
            else:
                r_total[active] += delta.to(x_adv.dtype)
                x_adv[active] = (x[active] + (1 + overshoot) * r_total[active]).clamp(0, 1)
    return x_adv.detach()
