"""A linear probe (multinomial logistic regression) fitted on fixed features, full batch, deterministically."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 200
) -> nn.Linear:
    """Fit ``Linear(C, num_classes)`` to ``(features (N, C), labels (N,))`` by L-BFGS on cross-entropy + ``l2``.

    Full batch and a zero start, so every process fitting the same data gets the same probe. The features are
    standardised inside the fit and the scaling folded back into the weights, so that the optimiser sees a
    well-conditioned problem whatever the layer's scale; the returned probe takes the raw features.
    """
    features = features.detach().double()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probe = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():  # w . (f - m) / s + b  ==  (w / s) . f + (b - (w / s) . m)
        scaled = weight / std
        probe.weight.copy_(scaled.float())
        probe.bias.copy_((bias - scaled @ mean).float())
    return probe.requires_grad_(False).eval()
