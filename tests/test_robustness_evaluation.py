"""RobustnessEvaluation: metrics, report and checks; `medrobust test` on a checkpoint; DDP equals one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import quiet_trainer, write_medmnist_npz
from lightning.pytorch.loggers import CSVLogger
from mlflow import MlflowClient
from test_cli import QUICKSTART, TINY, medrobust, runs

from medrobust.callbacks.robustness_evaluation import RobustnessEvaluation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.cli import MedRobustCLI
from medrobust.experiments.tracking.mlflow_logger import MLflowRunLogger
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.utilities.errors import InputError


@pytest.fixture
def trained(tmp_path, synthetic_npz):
    dm = MedMNISTDataModule("pathmnist", path=str(synthetic_npz("pathmnist", n=(96, 16, 24))), batch_size=16)
    model = ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)
    quiet_trainer(tmp_path, max_epochs=3, limit_val_batches=0).fit(model, dm)
    return model, dm


def test_report_metrics_and_artifacts(tmp_path, trained) -> None:
    model, dm = trained
    callback = RobustnessEvaluation(
        attacks=["fgsm", "pgd", "autoattack"],
        linf_eps=["2/255", "8/255"],
        l2_eps=[0.5],
        pgd_steps=5,
        autoattack_steps=5,
        square_queries=20,
        sanity_square_queries=20,
    )
    logger = MLflowRunLogger(
        "robust", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts")
    )
    metrics = quiet_trainer(tmp_path, logger=logger, callbacks=[callback]).test(model, dm, verbose=False)[0]
    for attack in ("fgsm", "pgd5", "autoattack"):
        for grid in ("linf_2_255", "linf_8_255", "l2_0.5"):
            assert f"test/adv/{attack}/{grid}/acc" in metrics and f"test/adv/{attack}/{grid}/bal_acc" in metrics
            assert metrics[f"test/adv/{attack}/{grid}/acc"] <= metrics["test/acc"] + 1e-6
    assert metrics["test/adv/pgd5/linf_8_255/acc"] <= metrics["test/adv/pgd5/linf_2_255/acc"] + 0.05
    report = callback.report
    assert {r["key"] for r in report["results"]} >= {"clean", "pgd5/linf_8_255"}
    assert next(r for r in report["results"] if r["key"] == "clean")["acc"] == pytest.approx(metrics["test/acc"])
    assert all(r["n"] == 24 for r in report["results"])
    checks = report["checks"]
    assert checks["outputs_are_logits"] and checks["deterministic"] and checks["nonzero_input_grad"]
    client = MlflowClient(logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.data.params["robustness.pgd_steps"] == "5" and run.data.tags["robustness.check.deterministic"] == "True"
    logged = json.loads(Path(client.download_artifacts(logger.run_id, "robustness.json")).read_text())
    assert logged["results"] == report["results"]
    # DeepFool's minimal distances come by default for a single-label task
    assert [a.path for a in client.list_artifacts(logger.run_id, "plots")] == [
        "plots/min_distance.png",
        "plots/robustness.png",
    ]
    assert metrics["test/adv/deepfool/l2_dist/n"] == logged["distances"]["deepfool"]["n"]


def test_softmax_outputs_fail_the_logit_check(tmp_path, trained) -> None:
    model, dm = trained
    model.net.backbone = torch.nn.Sequential(model.net.backbone, torch.nn.Softmax(1))
    callback = RobustnessEvaluation(attacks=["fgsm"], linf_eps=["8/255"], l2_eps=[], sanity_square_queries=5)
    with pytest.warns(UserWarning, match="outputs_are_logits"):
        quiet_trainer(tmp_path, callbacks=[callback]).test(model, dm, verbose=False)
    assert callback.report["checks"]["outputs_are_logits"] is False


class QuantisedWhenBright(torch.nn.Module):
    """Rounds the input of bright images (a gradient-masking defence: zero input gradient), passes the others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x.flatten(1).mean(1) > 0.8).view(-1, *[1] * (x.dim() - 1))
        return torch.where(bright, torch.round(x * 4) / 4, x)


def test_masking_checks_judge_a_global_sample_not_the_first_batch(tmp_path, trained) -> None:
    """Issue 25.2: the masking checks count every sample of their global sample, over every batch. Here the test
    images after the first batch (ids 16-23) are bright and the network rounds bright inputs: their input gradient is
    zero. On the first batch alone the check passed; over the 24 samples a third have no gradient, and it fails. A
    sample of 20 (the first 20 by index) judges 20."""
    model, dm = trained
    arrays = dict(np.load(dm.path))
    arrays["test_images"][16:] = 250
    path = tmp_path / "bright.npz"
    np.savez_compressed(path, **arrays)
    dm = MedMNISTDataModule("pathmnist", path=str(path), batch_size=16)
    model.net.backbone = torch.nn.Sequential(QuantisedWhenBright(), model.net.backbone)
    callback = RobustnessEvaluation(attacks=["fgsm"], linf_eps=["8/255"], l2_eps=[], sanity_square_queries=5)
    with pytest.warns(UserWarning, match="nonzero_input_grad"):
        quiet_trainer(tmp_path, callbacks=[callback]).test(model, dm, verbose=False)
    checks = callback.report["checks"]
    assert checks["n"] == checks["black_box_n"] == 24 and checks["nonzero_input_grad"] is False
    assert checks["nonzero_input_grad_fraction"] == pytest.approx(16 / 24)
    assert checks["outputs_are_logits"] and checks["deterministic"]
    sample = RobustnessEvaluation(attacks=["fgsm"], linf_eps=["8/255"], l2_eps=[], sanity_max_samples=20)
    with pytest.warns(UserWarning, match="nonzero_input_grad"):
        quiet_trainer(tmp_path, callbacks=[sample]).test(model, dm, verbose=False)
    assert sample.report["checks"]["n"] == 20 and sample.report["checks"]["nonzero_input_grad_fraction"] == 16 / 20
    assert sample.report["settings"]["sanity_max_samples"] == 20
    with pytest.raises(InputError, match="sanity_max_samples"):
        RobustnessEvaluation(sanity_max_samples=0)


def test_max_samples(tmp_path, trained) -> None:
    model, dm = trained
    callback = RobustnessEvaluation(
        attacks=["pgd", "autoattack"],
        linf_eps=["8/255"],
        l2_eps=[],
        pgd_steps=2,
        autoattack_steps=2,
        square_queries=5,
        max_samples=20,
        autoattack_max_samples=10,
        sanity_checks=False,
    )
    logger = CSVLogger(tmp_path / "csv", name="robust")
    quiet_trainer(tmp_path, callbacks=[callback], logger=logger).test(model, dm, verbose=False)
    n = {r["key"]: r["n"] for r in callback.report["results"]}
    assert n == {"clean": 20, "pgd2/linf_8_255": 20, "autoattack/linf_8_255": 10, "worst/linf_8_255": 10}
    # Issue 23.3: under a logger other than MLflow, the report and figures land in its log dir, tags and settings too.
    folder = Path(logger.log_dir)
    assert json.loads((folder / "robustness.json").read_text())["results"] == json.loads(
        json.dumps(callback.report["results"])
    )
    assert (folder / "plots" / "robustness.png").stat().st_size > 1000
    assert json.loads((folder / "tags.json").read_text())["robustness.near_constant"]
    assert "robustness.max_samples" in (folder / "hparams.yaml").read_text()
    assert "test/adv/worst/linf_8_255/acc" in (folder / "metrics.csv").read_text()


def test_worst_case_is_per_sample_over_the_same_samples() -> None:
    """Issue 9.5: two attacks that each fool a different half of the samples have accuracy 0.5 each; the minimum of
    those accuracies (the old summary) said 0.5, the per-sample worst case is 0."""
    from medrobust.lightning_modules.metrics.confusion import (
        accuracy,
        confusion_from_predictions,
        worst_case_predictions,
    )

    y = torch.tensor([0, 1, 0, 1])
    clean, attack_a, attack_b = y.clone(), torch.tensor([1, 0, 0, 1]), torch.tensor([0, 1, 1, 0])
    worst = worst_case_predictions([clean, attack_a, attack_b], y, "multiclass")
    assert accuracy(confusion_from_predictions(worst, y, "multiclass", 2)) == 0.0
    assert torch.equal(worst, torch.tensor([1, 0, 1, 0]))
    labels = torch.tensor([[1, 0], [0, 1]])  # multi-label: per label, wrong if any evaluation is wrong
    worst = worst_case_predictions(
        [labels, torch.tensor([[1, 1], [0, 1]]), torch.tensor([[0, 0], [0, 1]])], labels, "multilabel"
    )
    assert torch.equal(worst, torch.tensor([[0, 1], [0, 1]]))


def test_multilabel_gets_its_attacks_and_autoattack_is_refused_before_training(tmp_path, synthetic_npz) -> None:
    """Issue 9.7: a multi-label task gets fgsm and pgd by default; asking for AutoAttack fails at setup, before the
    first training step, not after the whole fit."""
    from lightning.pytorch import Callback

    dm = MedMNISTDataModule("chestmnist", path=str(synthetic_npz("chestmnist")), batch_size=16)
    default = RobustnessEvaluation(linf_eps=["8/255"], l2_eps=[], pgd_steps=2, sanity_checks=False)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[default])
    model = ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    assert {r["key"] for r in default.report["results"]} == {
        "clean",
        "fgsm/linf_8_255",
        "pgd2/linf_8_255",
        "worst/linf_8_255",
    }

    steps = []

    class Count(Callback):
        def on_train_batch_start(self, *args) -> None:
            steps.append(1)

    explicit = RobustnessEvaluation(attacks=["fgsm", "autoattack"], linf_eps=["8/255"], l2_eps=[])
    with pytest.raises(InputError, match="assume a softmax classifier"):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[explicit, Count()]).fit(model, dm)
    assert steps == []


ROBUST = {
    "trainer": {
        "callbacks": [
            {
                "class_path": "medrobust.callbacks.RobustnessEvaluation",
                "init_args": {
                    "attacks": ["fgsm", "pgd"],
                    "linf_eps": ["2/255", "8/255"],
                    "l2_eps": [0.5],
                    "pgd_steps": 5,
                    "sanity_square_queries": 20,
                    "sanity_max_samples": 30,  # the masking checks' global sample (issue 25.2)
                    # one global budget: the first 37 and 21 test images by index, on 1 process and on 2
                    "max_samples": 37,
                    "distance_max_samples": 21,
                },
            }
        ]
    }
}


def test_medrobust_test_on_a_checkpoint_single_and_ddp(tmp_path, monkeypatch) -> None:
    """`medrobust test --ckpt_path` runs the report; 2 DDP processes (gloo) give exactly the single-process numbers,
    on the same images: the sample budgets are global (the first 37 of 61 test images by index; 21 for distances),
    where a per-process budget would attack 37 on each process. 61 test samples do not split evenly over 2 processes:
    a padding sampler would count one twice."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = write_medmnist_npz(tmp_path / "pneumonia.npz", "pneumoniamnist", n=(128, 32, 61))
    common = [*TINY, f"--data.path={data}", "--data.eval_batch_size=16"]
    MedRobustCLI(args=["fit", "--config", QUICKSTART, *common, "--trainer.max_epochs=2", "--test_after_fit=false"])
    best = runs(uri)[0].data.tags["best_checkpoint"]
    (tmp_path / "robust.yaml").write_text(yaml.safe_dump(ROBUST))
    test_args = [
        "test",
        "--config",
        QUICKSTART,
        "--config",
        str(tmp_path / "robust.yaml"),
        *common,
        f"--ckpt_path={best}",
        "--system_metrics.enabled=false",
    ]
    MedRobustCLI(args=test_args)  # one process, in this one
    ddp = medrobust(
        *test_args,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    _fit_run, *test_runs = sorted(runs(uri), key=lambda r: r.info.start_time)
    assert len(test_runs) == 2 and all(r.info.status == "FINISHED" for r in test_runs)
    one, two = (r.data.metrics for r in test_runs)
    # issue 24.2: each setting logged once (as the config wrote it); what was resolved from it beside it, as numbers
    params = test_runs[0].data.params
    assert params["callbacks.RobustnessEvaluation.pgd_steps"] == "5" and "robustness.pgd_steps" not in params
    assert params["callbacks.RobustnessEvaluation.linf_eps"] == "['2/255', '8/255']"
    assert params["robustness.grid"] == "['linf:0.00784314', 'linf:0.0313725', 'l2:0.5']"
    adv = [k for k in one if k.startswith("test/adv/")]
    # 2 attacks x 3 budgets x (acc, bal_acc); worst case x 3 x (acc, bal_acc, n, share); DeepFool's distance x 7
    # (PGD from a random start per image, seeded by its id: the same on one process and two)
    assert len(adv) == 12 + 3 * 4 + 7
    for key in [*adv, "test/acc", "test/bal_acc", "test/auroc"]:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    client = MlflowClient(uri)
    reports = [
        json.loads(Path(client.download_artifacts(r.info.run_id, "robustness.json")).read_text()) for r in test_runs
    ]
    assert all(r["n"] == 37 for report in reports for r in report["results"])  # the budget's samples, each once
    checks = [report["checks"] for report in reports]
    assert checks[0]["n"] == checks[0]["black_box_n"] == 30 and checks[1] == pytest.approx(checks[0])
    deepfool = [report["distances"]["deepfool"] for report in reports]
    assert all(d["n"] == len(d["values"]) + d["misclassified"] == 21 for d in deepfool)
    assert deepfool[0]["values"] == pytest.approx(deepfool[1]["values"])
