"""The medrobust command end to end: a tracked run, resume after a kill, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env, write_medmnist_npz
from mlflow import MlflowClient

from experiments.cli import MedRobustCLI

TINY = [
    "--model.model_name=test_resnet",
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger.init_args.experiment_name=tests",
    "--mlflow.system_metrics_interval=0.2",
    "--trainer.log_every_n_steps=1",
]
QUICKSTART = str(REPO / "experiments" / "configs" / "quickstart.yaml")


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_fit_records_a_complete_run(tracking_uri, pneumonia_data_args) -> None:
    MedRobustCLI(args=["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args])
    (run,) = runs(tracking_uri)
    client = MlflowClient(tracking_uri)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.model_name"] == "test_resnet" and params["data.flag"] == "pneumoniamnist"
    assert params["model.num_classes"] == "2" and params["model.optimizer.init_args.lr"] == "0.001"  # linked + nested
    assert params["trainer.max_epochs"] == "2"
    metrics = run.data.metrics
    assert {"val/auroc", "val/acc", "val/bal_acc", "test/auroc", "test/acc", "test/bal_acc", "train/loss_step"} <= set(
        metrics
    )
    assert any(k.startswith("system/") for k in metrics)
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2
    (dataset,) = {d.dataset.digest for d in run.inputs.dataset_inputs}
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags}
    assert contexts == {"train", "val", "test"} and run.data.tags["data.md5"] == dataset
    assert {
        "config.yaml",
        "plots/confusion_matrix_test.png",
        "confusion_matrix_test.json",
        "checkpoints/best.ckpt",
    } <= artifacts(client, run.info.run_id)
    # the logged best checkpoint evaluates on its own, with the safe loader
    best = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt")
    assert "optimizer_states" not in torch.load(best, weights_only=True)


def test_test_after_fit_can_be_turned_off(tracking_uri, pneumonia_data_args) -> None:
    MedRobustCLI(
        args=[
            "fit",
            "--config",
            QUICKSTART,
            *TINY,
            *pneumonia_data_args,
            "--test_after_fit=false",
            "--trainer.max_epochs=1",
        ]
    )
    (run,) = runs(tracking_uri)
    assert run.info.status == "FINISHED" and not any(k.startswith("test/") for k in run.data.metrics)


def test_test_subcommand_on_a_checkpoint(tracking_uri, pneumonia_data_args) -> None:
    MedRobustCLI(args=["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--trainer.max_epochs=1"])
    (fit_run,) = runs(tracking_uri)
    best = fit_run.data.tags["best_checkpoint"]
    MedRobustCLI(args=["test", "--config", QUICKSTART, *TINY, *pneumonia_data_args, f"--ckpt_path={best}"])
    test_run = next(r for r in runs(tracking_uri) if r.info.run_id != fit_run.info.run_id)
    assert test_run.data.metrics["test/auroc"] == pytest.approx(fit_run.data.metrics["test/auroc"])


def medrobust(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args],
        cwd=cwd,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_resume_after_kill_continues_the_same_run(tmp_path, pneumonia_data_args) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--trainer.max_epochs=3"]
    killed = medrobust(
        *base, "--trainer.callbacks+=kill_after_epochs.KillAfterEpochs", cwd=tmp_path, MLFLOW_TRACKING_URI=uri
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run,) = runs(uri)
    assert run.info.status == "RUNNING"  # killed outright: nothing could mark it
    assert list((tmp_path / "runs").glob(f"*/{run.info.run_id}/checkpoints/last.ckpt"))

    resumed = medrobust(*base, "--ckpt_path=last", cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (run,) = runs(uri)  # still exactly one run
    assert run.info.status == "FINISHED"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "val/auroc")
    assert len(history) == 3  # epoch 0 from the killed process, epochs 1-2 after resume
    assert "test/auroc" in run.data.metrics


def test_crash_marks_the_run_failed(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "root"
    write_medmnist_npz(root / "pneumoniamnist.npz", "pneumoniamnist")  # right name, wrong bytes
    result = medrobust(
        "fit", "--config", QUICKSTART, *TINY, f"--data.root={root}", cwd=tmp_path, MLFLOW_TRACKING_URI=uri
    )
    assert result.returncode == 2
    assert "MD5 mismatch" in result.stderr and "Traceback" not in result.stderr
    assert [r.info.status for r in runs(uri)] == ["FAILED"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.flag=pneumonia"], "Unknown 2D MedMNIST flag 'pneumonia'"),
        (["--data.size=32"], "no size 32"),
        (["--model.model_name=resnet_18"], "Did you mean: resnet18"),
        (["--data.path=null", "--data.root={tmp}/empty"], "pneumoniamnist.npz not found in {tmp}/empty"),
        (["--data.path={tmp}/bad.npz"], "lacks keys"),
    ],
)
def test_bad_input_exits_nonzero_without_a_finished_run(tmp_path, args, message) -> None:
    import numpy as np

    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    good = write_medmnist_npz(tmp_path / "good.npz", "pneumoniamnist")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [f"--data.path={good}", *(a.format(tmp=tmp_path) for a in args)]
    result = medrobust("fit", "--config", QUICKSTART, *TINY, *args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.format(tmp=tmp_path) in result.stderr
    assert all(r.info.status == "FAILED" for r in runs(uri)) if (tmp_path / "mlflow.db").exists() else True
