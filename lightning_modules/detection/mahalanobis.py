"""Mahalanobis confidence score on pooled features of any tapped layers (Lee et al., NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from medrobust.lightning_modules.detection.gaussians import ClassGaussians, Reduce
from medrobust.lightning_modules.features.feature_taps import capture, pooled, resolve_tap
from medrobust.lightning_modules.nets.modes import attack_mode, eval_mode
from medrobust.utilities.errors import InputError


class Mahalanobis:
    """Per layer: global-average-pooled features, class means and a tied covariance fitted on training data; the
    layer's score is ``max_c -(f - mu_c)^T P (f - mu_c)``, the negative squared distance to the closest class mean.

    Args:
        net: a classifier whose ``backbone`` (or itself) holds the layers; images in [0, 1].
        layers: tap names (:mod:`~medrobust.lightning_modules.features.feature_taps`: ``layer3``, ``stages.2``, ...).
        num_classes: classes of the training labels.
        shrinkage: see :class:`ClassGaussians` (0: pseudo-inverse of the covariance).
        noise: input preprocessing magnitude in pixel units: before scoring, each layer moves ``x`` one signed
            gradient step of this size towards its closest class mean (``x - noise * sign(grad d^2)``, clipped to
            [0, 1]) and scores the result. Normalisation lives inside the model, so this is the pixel step.
        layer: the layer :meth:`score` reports (default: the last).

    ``fit(loader)`` streams over ``(x, y, ...)`` batches; ``layer_scores(x) -> (N, L)``, ``score(x) -> (N,)``.
    """

    name = "mahalanobis"

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[str],
        num_classes: int,
        shrinkage: float = 0.0,
        noise: float = 0.0,
        layer: str | None = None,
    ) -> None:
        self.net = net
        self.backbone = getattr(net, "backbone", net)
        if not layers:
            raise InputError("Mahalanobis needs at least one layer")
        for name in layers:
            resolve_tap(self.backbone, name)  # an unknown name raises, listing the valid ones
        self.layers = list(dict.fromkeys(layers))
        if layer is not None and layer not in self.layers:
            raise InputError(f"layer {layer!r} is not among the fitted layers {self.layers}")
        self.layer = layer or self.layers[-1]
        self.num_classes = num_classes
        self.shrinkage = shrinkage
        self.noise = noise
        self.means: dict[str, torch.Tensor] = {}
        self.precision: dict[str, torch.Tensor] = {}

    # --------------------------------------------------------------------------------------------------- features
    def features(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> tuple[torch.Tensor, dict]:
        """``(logits, {layer: (N, D) pooled features})`` of one forward pass (differentiable where grad is on)."""
        layers = self.layers if layers is None else layers
        with capture(self.backbone, layers) as taps:
            logits = self.net(x)
        return logits, {name: pooled(taps[name], self.backbone) for name in layers}

    def fit(self, loader: Iterable, reduce: Reduce | None = None, progress: bool = False) -> Mahalanobis:
        """Fit every layer's Gaussians in one pass over ``loader``; ``reduce`` sums the statistics over processes."""
        stats = {name: ClassGaussians(self.num_classes, self.shrinkage) for name in self.layers}
        device = next(self.net.parameters()).device
        with eval_mode(self.net):
            for batch in tqdm(loader, desc="Mahalanobis fit", disable=not progress, leave=False):
                x, y = batch[0].to(device), batch[1].to(device).flatten()
                _, feats = self.features(x)
                for name in self.layers:
                    stats[name].update(feats[name], y)
        for name, gaussians in stats.items():
            if reduce is not None:
                gaussians.reduce(reduce)
            means, precision = gaussians.finalize()
            self.means[name], self.precision[name] = means.float(), precision.float()
        return self

    # ---------------------------------------------------------------------------------------------------- scores
    def distances(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` squared Mahalanobis distances of pooled features to each class mean of layer ``name``."""
        if name not in self.means:
            raise InputError("Mahalanobis.fit must run before scoring")
        diff = feats.float()[:, None, :] - self.means[name][None]
        return torch.einsum("ncd,de,nce->nc", diff, self.precision[name], diff)

    def score_features(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, L)`` layer scores of already pooled features (differentiable; no preprocessing)."""
        return torch.stack([-self.distances(name, feats[name]).amin(dim=1) for name in self.layers], dim=1)

    def layer_scores(self, x: torch.Tensor, noise: float | None = None) -> torch.Tensor:
        """``(N, L)`` scores of every layer, each after its own preprocessing step of size ``noise``."""
        return self.logits_and_layer_scores(x, noise)[1]

    def logits_and_layer_scores(self, x: torch.Tensor, noise: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits of x, (N, L) layer scores)``: the logits come from the same forward pass as the features, so a
        caller that needs both (the baselines beside this detector) runs the network once more only for
        preprocessing."""
        noise = self.noise if noise is None else noise
        if noise == 0:
            with eval_mode(self.net):
                logits, feats = self.features(x)
                return logits, self.score_features(feats)
        columns = []
        with attack_mode(self.net):
            x = x.detach().clone().requires_grad_(True)
            logits, feats = self.features(x)
            for i, name in enumerate(self.layers):
                distance = self.distances(name, feats[name]).amin(dim=1).sum()
                (grad,) = torch.autograd.grad(distance, x, retain_graph=i < len(self.layers) - 1)
                x_hat = (x.detach() - noise * grad.sign()).clamp(0, 1)
                with torch.no_grad():
                    columns.append(-self.distances(name, self.features(x_hat, [name])[1][name]).amin(dim=1))
        return logits.detach(), torch.stack(columns, dim=1).detach()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)``: the score of :attr:`layer`."""
        return self.layer_scores(x)[:, self.layers.index(self.layer)]
