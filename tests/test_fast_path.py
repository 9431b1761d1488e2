"""The fast path (bf16 autocast + channels-last) trains to the same test AUROC as fp32, and attacks inherit it."""

from __future__ import annotations

import statistics

import pytest
import torch
from conftest import SHARED_MEDMNIST, quiet_trainer
from test_cli import QUICKSTART, medrobust, runs

from medrobust.callbacks.adversarial_training import AdversarialTraining
from medrobust.callbacks.robust_validation import RobustValidation
from medrobust.callbacks.robustness_evaluation import RobustnessEvaluation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule

SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two quickstart fits, about 9 minutes on 2 cores: near the suite's 10-minute cap
@pytest.mark.skipif(not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file(), reason="needs the real PneumoniaMNIST")
def test_quickstart_auroc_bf16_within_a_point_of_fp32(tmp_path) -> None:
    """The quickstart as configured (10 epochs, real PneumoniaMNIST), seeds 0-2, in fp32 and on the fast path: the
    mean test AUROCs within a point. About 5 minutes on 2 cores, so marked slow.

    Measured on 2 cores (2026-11-24): fp32 0.948, 0.954, 0.947; bf16 + channels_last 0.934, 0.938, 0.949 (mean gap
    0.96 points). Per seed the gap exceeds a point on two of three seeds, and a 3-epoch single-seed version of this
    test failed at 2 threads (0.935 vs 0.924), so one run says little either way.
    """
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "fit",
        "--config",
        QUICKSTART,
        f"--data.root={SHARED_MEDMNIST}",
        "--data.download=false",
        "--trainer.enable_progress_bar=false",
        "--system_metrics.enabled=false",
    ]
    for seed in SEEDS:
        for extra in ([], ["--trainer.precision=bf16-mixed", "--model.channels_last=true"]):
            result = medrobust(
                *common, f"--seed_everything={seed}", *extra, cwd=tmp_path, timeout=600, MLFLOW_TRACKING_URI=uri
            )
            assert result.returncode == 0, result.stderr[-3000:]
    done = sorted(runs(uri), key=lambda r: r.info.start_time)
    fp32 = [r.data.metrics["test/auroc"] for r in done if r.data.params.get("trainer.precision") != "bf16-mixed"]
    bf16 = [r.data.metrics["test/auroc"] for r in done if r.data.params.get("trainer.precision") == "bf16-mixed"]
    assert len(fp32) == len(bf16) == len(SEEDS)
    print(f"quickstart test AUROC, seeds {SEEDS}: fp32 {fp32}, bf16 + channels_last {bf16}")
    assert statistics.mean(bf16) == pytest.approx(statistics.mean(fp32), abs=0.01)


class AutocastProbe(torch.nn.Module):
    """Records, at each forward, whether CPU autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return x


def test_training_attacks_and_evaluation_run_in_the_trainers_precision(tmp_path, synthetic_npz) -> None:
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz(n=(32, 8, 16))), batch_size=16)
    model = ClassifierModule("test_resnet", 2, 1, channels_last=True)
    probe = AutocastProbe()
    model.net.normalize = torch.nn.Sequential(model.net.normalize, probe)
    attack = AdversarialTraining("pgd", eps="2/255", steps=2)
    evaluation = RobustnessEvaluation(
        attacks=["pgd", "square"], linf_eps=["2/255"], l2_eps=[], pgd_steps=2, square_queries=5, sanity_square_queries=5
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1, precision="bf16-mixed")
    trainer.callbacks.extend([attack, RobustValidation(steps=2), evaluation])
    trainer.fit(model, dm)
    # PGD's inner steps, the training forward, validation and its PGD (RobustValidation)
    assert len(probe.seen) > 6 and all(probe.seen)
    assert "val/robust/acc" in trainer.callback_metrics
    probe.seen.clear()
    trainer.test(model, dm, verbose=False)
    # the clean test and PGD in bf16; torchattacks' Square (and AutoAttack) and the minimal distances (DeepFool) in
    # fp32, where they work and measure the same as in an fp32 run (issue 25.4)
    assert sum(probe.seen) > 4 and not all(probe.seen)
    assert {r["key"] for r in evaluation.report["results"]} >= {"pgd2/linf_2_255", "square/linf_2_255"}
    assert evaluation.report["distances"]["deepfool"]["n"] == 16  # every sample, misclassified ones at 0
