"""Minimal-distance attacks: DeepFool and JSMA against torchattacks, closed forms on a linear model, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchattacks
from conftest import quiet_trainer
from mlflow import MlflowClient
from torch import nn

from medrobust.callbacks.robustness_evaluation import RobustnessEvaluation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.lightning_modules.attacks.deepfool import deepfool
from medrobust.lightning_modules.attacks.jsma import jsma
from medrobust.lightning_modules.attacks.min_distance import DistanceSettings, distance_summary, minimal_distances
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.metrics.summary import summary_metrics
from medrobust.utilities.errors import InputError

#: torchattacks 3.5.1's JSMA (the first release with it) on fixed inputs, made by tests/reference/make_golden.py:
#: 3.4+ pins requests~=2.25.1, which mlflow cannot take, so it is not installed beside our 3.3.0
GOLDEN = Path(__file__).parent / "reference" / "golden.npz"


def small_net(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, classes)
    ).double()


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_deepfool_equals_torchattacks(classes) -> None:
    net = small_net(classes).eval()
    x = torch.rand(24, 1, 8, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    y[:3] = (y[:3] + 1) % classes  # three misclassified samples: both leave them unchanged
    theirs = torchattacks.DeepFool(net, steps=50, overshoot=0.02)(x, y)
    ours = deepfool(net, x, y, steps=50, overshoot=0.02, overshoot_on="step")
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=0)
    assert torch.equal(ours[:3], x[:3])
    total = deepfool(net, x, y, steps=50, overshoot=0.02, overshoot_on="total")  # the authors' overshoot
    assert torch.equal(total[:3], x[:3]) and (net(total[3:]).argmax(1) != y[3:]).float().mean() > 0.5


def jsma_inputs(classes: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The network, images and labels the JSMA reference ran on (tests/reference/make_golden.py)."""
    net = small_net(classes).eval()
    x = 0.9 * torch.rand(16, 1, 8, 8, dtype=torch.double, generator=torch.Generator().manual_seed(2))
    return net, x, net(x).argmax(1)


@pytest.mark.parametrize("classes", [2, 3])
def test_jsma_equals_torchattacks(classes) -> None:
    net, x, y = jsma_inputs(classes)
    with np.load(GOLDEN) as golden:
        assert torch.equal(x, torch.from_numpy(golden[f"torchattacks/jsma/{classes}/x"]))
        theirs = torch.from_numpy(golden[f"torchattacks/jsma/{classes}"])
    ours = jsma(net, x, y, classes, theta=1.0, gamma=0.3)
    assert torch.equal(ours, theirs)
    changed = ((ours - x) != 0).flatten(1).sum(1)
    assert (changed % 2 == 0).all() and (changed > 0).all() and (changed <= 2 * math.ceil(64 * 0.3 / 2)).all()
    assert (net(ours).argmax(1) == (y + 1) % classes).all()


def test_linear_model_closed_forms() -> None:
    """For logits ``Wx + b``, the distance to the boundary between classes y and k is ``|margin| / ||w_k - w_y||``: in
    L2 DeepFool reaches it in one step (times its overshoot), in L-inf the bisection brackets ``margin / ||.||_1``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).double()
    with torch.no_grad():
        net[1].weight.mul_(0.5)
    x = 0.5 + 0.02 * torch.randn(32, 1, 6, 6, dtype=torch.double)  # far from the [0, 1] box edges
    y = net(x).argmax(1)
    logits = net(x)
    margin = (logits[torch.arange(32), y] - logits[torch.arange(32), 1 - y]).abs()
    w = net[1].weight[1] - net[1].weight[0]
    settings = DistanceSettings(deepfool_overshoot=0.02, linf_max=0.5, linf_bisections=14, linf_pgd_steps=10)
    l2 = minimal_distances("deepfool", net, x, y, 2, settings)
    torch.testing.assert_close(l2, 1.02 * margin / w.norm(p=2), rtol=1e-6, atol=0)
    linf = minimal_distances("min_linf", net, x, y, 2, settings)
    exact = margin / w.norm(p=1)
    resolution = settings.linf_max / 2**settings.linf_bisections
    assert (linf >= exact - 1e-9).all() and (linf <= exact + resolution + 1e-9).all()
    assert ((linf - exact).abs() < resolution).all()


def test_misclassified_samples_are_at_distance_zero_and_unflipped_ones_at_inf() -> None:
    """Issue 25.5: one rule. A misclassified sample counts at 0 in the median (dropping it made a less accurate
    model look more robust), with its count; not flipped is inf, never a huge finite stand-in; undefined (NaN in)
    is counted and taken as inf; nothing reported is NaN."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double()
    x, y = torch.full((4, 1, 2, 2), 0.5, dtype=torch.double), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():  # class 0 wins everywhere by a margin no 1/255 L-inf change can close
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([1.0, 0.0]))
    d = minimal_distances("min_linf", net, x, y, 2, DistanceSettings(linf_max=1 / 255))
    assert (d[[1, 3]] == 0).all() and torch.isinf(d[[0, 2]]).all()
    stats = distance_summary(d)
    assert stats["n"] == 4 and stats["misclassified"] == 2 and stats["fooled"] == 0
    assert stats["median"] == math.inf and stats["q25"] == 0  # half at 0, half not flipped
    stats = distance_summary(torch.tensor([0.1, 0.2, 0.3, math.inf]))
    assert stats["q75"] == math.inf  # it was 2.5e29, interpolated towards a finite stand-in for inf
    assert stats["median"] == pytest.approx(0.25) and stats["q25"] == pytest.approx(0.175)
    assert stats["fooled"] == 0.75 and stats["mean_fooled"] == pytest.approx(0.2)
    less_accurate = distance_summary(torch.tensor([0.0, 0.0, 0.2, 0.3]))  # two misclassified: less robust, not more
    assert less_accurate["median"] == pytest.approx(0.1) and less_accurate["misclassified"] == 2
    assert less_accurate["median"] < distance_summary(torch.tensor([0.2, 0.3]))["median"]
    undefined = distance_summary(torch.tensor([0.1, math.nan, math.nan, 0.4]))
    assert undefined["undefined"] == 2 and undefined["median"] == math.inf and undefined["q25"] == pytest.approx(0.325)
    assert not any(math.isnan(v) for v in undefined.values()) and undefined["fooled"] == 0.5
    with pytest.raises(InputError, match="valid: \\['deepfool', 'jsma', 'min_linf'\\]"):
        RobustnessEvaluation(distance_attacks=["cw"])


def test_report_logs_distances_and_summary(tmp_path, synthetic_npz) -> None:
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz("pneumoniamnist", n=(96, 16, 24))), batch_size=16)
    model = ClassifierModule("resnet18", dm.num_classes, dm.in_chans, dm.task, small_input=True)
    quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(model, dm)
    callback = RobustnessEvaluation(
        attacks=["fgsm"],
        linf_eps=["2/255"],
        l2_eps=[],
        sanity_checks=False,
        distance_attacks=["deepfool", "jsma", "min_linf"],
        distance=DistanceSettings(linf_bisections=3, linf_pgd_steps=3, jsma_gamma=0.02),
        distance_max_samples=12,
    )
    logger = MLflowRunLogger(
        "dist", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts")
    )
    metrics = quiet_trainer(tmp_path, logger=logger, callbacks=[callback]).test(model, dm, verbose=False)[0]
    report = callback.report["distances"]
    for attack, norm in (("deepfool", "l2"), ("jsma", "l0"), ("min_linf", "linf")):
        stats = report[attack]
        assert stats["n"] == 12 and len(stats["values"]) == stats["n"] - stats["misclassified"]
        assert metrics[f"test/adv/{attack}/{norm}_dist/misclassified"] == stats["misclassified"]
        assert metrics[f"test/adv/{attack}/{norm}_dist/n"] == stats["n"]
        if stats["n"]:
            assert metrics[f"test/adv/{attack}/{norm}_dist/median"] == pytest.approx(stats["median"])
        assert summary_metrics(metrics)[f"summary/adv_dist/{norm}/{attack}"] == pytest.approx(stats["median"])
    client = MlflowClient(logger.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(logger.run_id, "plots")}
    assert "plots/min_distance.png" in artifacts
    logged = json.loads(Path(client.download_artifacts(logger.run_id, "robustness.json")).read_text())
    assert logged["distances"]["deepfool"]["values"] == report["deepfool"]["values"]
    assert logged["settings"]["distance"]["linf_bisections"] == 3


def test_minimal_distances_are_measured_in_fp32_inside_a_bf16_autocast() -> None:
    """Issue 25.4: a bf16-mixed run measured its distances in bf16 (8 bits of mantissa on a search for the smallest
    change); the searches now leave any autocast, so a bf16 and an fp32 evaluation give the same distances."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 3)).eval()
    x = torch.rand(16, 1, 16, 16)
    y = net(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two misclassified
    settings = DistanceSettings(linf_bisections=4, linf_pgd_steps=3)
    for attack in ("deepfool", "min_linf"):
        plain = minimal_distances(attack, net, x, y, 3, settings)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = minimal_distances(attack, net, x, y, 3, settings)
        assert plain.dtype == mixed.dtype == torch.float32 and torch.equal(plain, mixed), attack
        assert (plain[:2] == 0).all()
        median = distance_summary(plain)["median"]
        assert distance_summary(mixed)["median"] == pytest.approx(median, rel=0.01)


def test_minimal_distances_of_a_bf16_network_are_measured_on_an_fp32_copy() -> None:
    """Review of issue 25.4: a bf16-true network (parameters in bf16) met fp32 images and crashed after training."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(8, 1, 4, 4)
    y = net(x).argmax(1)
    low = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval().to(torch.bfloat16)
    low.load_state_dict(net.state_dict())
    d = minimal_distances("deepfool", low, x, y, 3, DistanceSettings())
    assert d.dtype == torch.float32 and next(low.parameters()).dtype == torch.bfloat16  # the network is untouched
    assert not torch.isnan(d).any()


def test_deepfool_stops_where_its_step_is_undefined_and_the_summary_counts_it() -> None:
    """Issue 25.5: on a flat region (zero gradient) DeepFool's step is 0/0; the sample is marked undefined, counted,
    and taken as not flipped: never a NaN median."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()).eval()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([1.0, 0.0]))  # class 0 everywhere, no gradient anywhere
    x, y = torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)
    d = minimal_distances("deepfool", net, x, y, 2, DistanceSettings())
    assert torch.isnan(d).all()
    stats = distance_summary(d)
    assert stats["undefined"] == 3 and stats["median"] == math.inf and stats["fooled"] == 0
