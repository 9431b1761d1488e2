"""Plain-PyTorch components: Normalize, NormalizedClassifier, metrics, metric names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from lightning_modules.components.metric_names import metric_name
from lightning_modules.components.metrics import MultilabelBalancedAccuracy, classification_metrics
from lightning_modules.components.normalize import Normalize
from lightning_modules.components.normalized_classifier import NormalizedClassifier


def test_normalize_per_channel() -> None:
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0), in_chans=3)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), expected)


def test_normalize_broadcasts_single_value() -> None:
    assert Normalize((0.5,), (0.5,), in_chans=3).mean.shape == (1, 3, 1, 1)


@pytest.mark.parametrize(("mean", "std", "match"), [((0.5, 0.5), (0.5,), "mean has 2"), ((0.5,), (0.0,), "positive")])
def test_normalize_rejects(mean, std, match) -> None:
    with pytest.raises(ValueError, match=match):
        Normalize(mean, std, in_chans=3)


def test_normalization_is_the_first_layer() -> None:
    """The network maps pixel-unit inputs: net(x) == backbone(normalize(x))."""
    net = NormalizedClassifier.from_timm("test_resnet", num_classes=3, in_chans=1, mean=(0.3,), std=(0.2,)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(net(x), net.backbone((x - 0.3) / 0.2))


def test_unknown_timm_model_suggests() -> None:
    with pytest.raises(ValueError, match="Unknown timm model 'resnet_18'.*resnet18"):
        NormalizedClassifier.from_timm("resnet_18", num_classes=2, in_chans=1)


def test_multiclass_metrics_match_sklearn() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 3, generator=gen).softmax(-1)
    y = torch.randint(0, 3, (200,), generator=gen)
    out = classification_metrics("multiclass", 3)(probs, y)
    assert out["acc"] == pytest.approx((probs.argmax(1) == y).float().mean().item())
    assert out["bal_acc"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert out["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-5)


def test_binary_auroc_is_the_positive_class_auc() -> None:
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(100, 2, generator=gen).softmax(-1)
    y = torch.randint(0, 2, (100,), generator=gen)
    assert classification_metrics("multiclass", 2)(probs, y)["auroc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))


def test_multilabel_balanced_accuracy() -> None:
    gen = torch.Generator().manual_seed(2)
    probs = torch.rand(300, 4, generator=gen)
    y = (torch.rand(300, 4, generator=gen) < 0.3).long()
    ours = MultilabelBalancedAccuracy(4)(probs, y).item()
    expected = np.mean([balanced_accuracy_score(y[:, k], probs[:, k] > 0.5) for k in range(4)])
    assert ours == pytest.approx(expected)


def test_metric_names_survive_mlflow() -> None:
    assert metric_name("test", "adv", "linf_0.0078", "acc") == "test/adv/linf_0.0078/acc"
    with pytest.raises(ValueError, match="MLflow would strip"):
        metric_name("test", "eps=8/255")
