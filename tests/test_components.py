"""Plain-PyTorch components: Normalize, NormalizedClassifier, metrics, metric names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medrobust.lightning_modules.metrics.confusion import balanced_accuracy, confusion_counts
from medrobust.lightning_modules.metrics.metric_names import SCHEMA, build_name, metric_name, parse_name
from medrobust.lightning_modules.metrics.summary import summary_metrics
from medrobust.lightning_modules.metrics.task_metrics import BalancedAccuracy, classification_metrics
from medrobust.lightning_modules.nets.normalize import Normalize
from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier


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
    logits = torch.randn(200, 3, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)
    out = classification_metrics("multiclass", 3)(logits, y)
    assert out["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert out["bal_acc"] == pytest.approx(balanced_accuracy_score(y, logits.argmax(1)))
    assert out["auroc"] == pytest.approx(roc_auc_score(y, logits.softmax(1), multi_class="ovr"), abs=1e-5)


def test_binary_auroc_is_the_positive_class_auc() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(100, 2, generator=gen)
    y = torch.randint(0, 2, (100,), generator=gen)
    auroc = classification_metrics("multiclass", 2)(logits, y)["auroc"]
    assert auroc == pytest.approx(roc_auc_score(y, logits.softmax(1)[:, 1]), abs=1e-6)


def one_hot_logits(pred: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), num_classes).float()


def test_balanced_accuracy_has_one_definition_sklearns() -> None:
    """Issue 9.2: a class that is predicted but absent from the labels is skipped, as scikit-learn does; the module's
    metric, the confusion-count function behind every callback and sklearn all agree (torchmetrics' macro recall
    said 0.5 here)."""
    y, pred = [0, 0, 1, 1], [0, 2, 1, 1]
    expected = balanced_accuracy_score(y, pred)
    assert expected == pytest.approx(0.75)
    logits = one_hot_logits(pred, 3)
    assert float(BalancedAccuracy("multiclass", 3)(logits, torch.tensor(y))) == pytest.approx(expected)
    counts = confusion_counts(logits, torch.tensor(y), "multiclass", 3)
    assert float(balanced_accuracy(counts)) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_accuracy_matches_sklearn_on_random_predictions(seed: int) -> None:
    gen = np.random.default_rng(seed)
    y, pred = gen.integers(0, 5, 60), gen.integers(0, 5, 60)
    y[y == 3] = 4  # a class absent from the labels
    ours = BalancedAccuracy("multiclass", 5)(one_hot_logits(pred.tolist(), 5), torch.tensor(y))
    assert float(ours) == pytest.approx(balanced_accuracy_score(y, pred))


def test_multilabel_balanced_accuracy_is_sklearns_per_label() -> None:
    """Multi-label: scikit-learn's balanced accuracy of each label's binary problem, averaged; a label with no
    positives is scored by its specificity, not given a sensitivity of 0."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 4, generator=gen)
    y = (torch.rand(300, 4, generator=gen) < 0.3).long()
    y[:, 3] = 0  # no positives at all
    ours = BalancedAccuracy("multilabel", 4)(logits, y).item()
    expected = np.mean([balanced_accuracy_score(y[:, k], logits[:, k] > 0) for k in range(4)])
    assert ours == pytest.approx(expected)
    specificity = float(((logits[:, 3] > 0) == 0).float().mean())
    per_label = [balanced_accuracy_score(y[:, k], logits[:, k] > 0) for k in range(4)]
    assert per_label[3] == pytest.approx(specificity)


def test_metric_names_survive_mlflow() -> None:
    assert metric_name("test", "adv", "linf_0.0078", "acc") == "test/adv/linf_0.0078/acc"
    with pytest.raises(ValueError, match="MLflow would strip"):
        metric_name("test", "eps=8/255")


def test_every_schema_family_builds_and_parses_back() -> None:
    """Issue 23.4: one template per family of names that are read back; build and parse are inverses."""
    examples = {
        "adv_worst": {"threat": "linf_8_255", "stat": "acc"},
        "adv_distance": {"attack": "jsma", "norm": "l0", "stat": "median"},
        "adv_attack": {"attack": "pgd20_r5", "threat": "l2_0.5", "stat": "bal_acc"},
        "shortcut": {"split": "flipped", "stat": "dtpr"},
        "detect": {"detector": "mahalanobis", "target": "pgd_linf_8_255", "stat": "tnr_at_tpr95"},
        "shift_corruption_mean": {"corruption": "gaussian_noise", "stat": "auroc"},
        "saliency": {"where": "shortcut/aligned/", "method": "integrated_gradients", "stat": "iou"},
        "summary_adv": {"stat": "top_pred_share", "threat": "linf_1_255"},
        "summary_adv_distance": {"norm": "l2", "attack": "deepfool"},
        "summary_shortcut": {"stat": "auroc", "split": "absent"},
        "summary_detect": {"stat": "auroc", "detector": "msp", "target": "ood_breastmnist"},
        "summary_saliency": {"stat": "energy", "method": "gradient", "split": "/shortcut_aligned"},
    }
    assert set(examples) == set(SCHEMA)
    for family, fields in examples.items():
        assert parse_name(build_name(family, **fields)) == (family, fields)
    assert parse_name("test/adv/worst/linf_8_255/acc")[0] == "adv_worst"  # not an attack named "worst"
    assert parse_name("val/auroc") is None
    with pytest.raises(ValueError, match="would not parse back"):
        build_name("adv_attack", attack="worst", threat="linf_8_255", stat="acc")


def test_summary_names_are_derived_through_the_schema() -> None:
    metrics = {
        "test/acc": 0.9,
        "test/adv/worst/linf_8_255/acc": 0.5,
        "test/adv/worst/linf_8_255/n": 64,
        "test/adv/pgd20/linf_8_255/acc": 0.6,
        "test/adv/deepfool/l2_dist/median": 0.3,
        "test/adv/jsma/l0_dist/median": 0.02,
        "test/shortcut/flipped/auroc": 0.7,
        "test/saliency/gradient/energy": 0.4,
        "test/shortcut/aligned/saliency/gradient/iou": 0.1,
        "test/detect/msp/ood_breastmnist/auroc": 0.8,
        "test/shift/gaussian_noise/mean/auroc": 0.6,
        "test/shift/blur/mean/auroc": 0.8,
    }
    assert summary_metrics(metrics) == pytest.approx(
        {
            "summary/adv_acc/linf_8_255": 0.5,
            "summary/adv_n/linf_8_255": 64.0,
            "summary/adv_dist/l2/deepfool": 0.3,
            "summary/adv_dist/l0/jsma": 0.02,
            "summary/clean_acc": 0.9,
            "summary/detect_auroc/msp/ood_breastmnist": 0.8,
            "summary/saliency_energy/gradient": 0.4,
            "summary/saliency_iou/gradient/shortcut_aligned": 0.1,
            "summary/shift_auroc": 0.7,
            "summary/shortcut_auroc/flipped": 0.7,
        }
    )
