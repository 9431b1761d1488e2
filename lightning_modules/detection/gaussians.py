"""Class-conditional Gaussians with a tied covariance, fitted by streaming sums (Lee et al. 2018's generative model)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from medrobust.utilities.errors import InputError

Reduce = Callable[[torch.Tensor], torch.Tensor]
#: covariance eigenvalues below this share of the largest are taken as zero by the pseudo-inverse: features computed in
#: float32 carry no information there, and a lower cutoff lets rounding (batch composition, summation order over
#: processes) decide which directions count, and move the scores
PINV_RTOL = 1e-6


class ClassGaussians:
    """One mean per class and one shared covariance of feature vectors, from float64 sums over batches.

    :meth:`update` adds a batch to three sums: samples per class, the per-class sum of features, and the sum of outer
    products. Memory is ``O(C * D + D * D)`` whatever the number of samples, and the sums of several processes add up
    (:meth:`reduce`), so a fit split over processes equals the fit on all samples at once.

    :meth:`finalize` gives the means and the tied (maximum-likelihood) covariance
    ``(sum x x^T - sum_c n_c mu_c mu_c^T) / N``, and its precision matrix. That formula subtracts large sums, which
    costs digits; float64 keeps the error near 1e-12 relative for pooled CNN features, far below what detection needs.

    The precision: pooled features of a trained network are often rank-deficient (dead ReLU channels, more channels
    than samples), so the covariance is singular. By default its **pseudo-inverse** (``torch.linalg.pinv``, symmetric),
    as Lee et al.'s code does through scikit-learn's ``EmpiricalCovariance``: directions without variance are ignored
    (eigenvalues below :data:`PINV_RTOL` of the largest).
    ``shrinkage=a`` instead inverts ``(1 - a) * S + a * tr(S) / D * I``, full rank for any ``a > 0``: directions with
    no training variance then count heavily, which suits small training sets with many channels.

    Example:
        >>> g = ClassGaussians(2)
        >>> g.update(torch.tensor([[0.0, 1.0], [2.0, 1.0], [5.0, 5.0], [7.0, 3.0]]), torch.tensor([0, 0, 1, 1]))
        >>> means, precision = g.finalize()
        >>> means.tolist()
        [[1.0, 1.0], [6.0, 4.0]]
    """

    def __init__(self, num_classes: int, shrinkage: float = 0.0) -> None:
        if not 0.0 <= shrinkage <= 1.0:
            raise InputError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.num_classes = num_classes
        self.shrinkage = shrinkage
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.sums: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add ``(N, D)`` features with class indices ``(N,)``."""
        z = features.detach().to(torch.float64)
        labels = labels.detach().long().to(z.device)
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, z.shape[1], dtype=torch.float64, device=z.device)
            self.outer = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
            self.count = self.count.to(z.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise InputError(f"class labels must be in 0..{self.num_classes - 1} to fit class Gaussians")
        self.count += torch.bincount(labels, minlength=self.num_classes).to(self.count)
        self.sums.index_add_(0, labels, z)
        self.outer += z.T @ z

    def reduce(self, reduce: Reduce) -> None:
        """Replace each sum by ``reduce(sum)``: a sum over processes makes every process hold the global fit."""
        if self.sums is None:
            raise InputError("ClassGaussians.reduce before any update: every process must see at least one batch")
        self.count, self.sums, self.outer = reduce(self.count), reduce(self.sums), reduce(self.outer)

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means (C, D), precision (D, D))``, float64."""
        if self.sums is None:
            raise InputError("ClassGaussians.finalize before any update")
        empty = (self.count == 0).nonzero().flatten().tolist()
        if empty:
            raise InputError(f"classes {empty} have no samples: a class mean needs at least one")
        n = self.count.sum()
        means = self.sums / self.count[:, None]
        covariance = (self.outer - (means * self.count[:, None]).T @ means) / n
        covariance = (covariance + covariance.T) / 2
        if self.shrinkage > 0:
            d = covariance.shape[0]
            target = torch.eye(d, dtype=covariance.dtype, device=covariance.device) * covariance.trace() / d
            return means, torch.linalg.inv((1 - self.shrinkage) * covariance + self.shrinkage * target)
        return means, torch.linalg.pinv(covariance, rtol=PINV_RTOL, hermitian=True)
