"""Issue 9.15, on 2 DDP processes (gloo): evaluation splits smaller than the number of processes are refused before
anything runs (a process with no sample has no evaluation loop, so the others would wait for it; Lightning's own
sampler crashed on it); splits that divide unevenly (3 samples: batches 2 and 1) reduce every count exactly once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from test_cli import QUICKSTART, TINY, medrobust, medrobust_in_process, runs

CALLBACKS = [
    {"class_path": "medrobust.callbacks.AdversarialTraining", "init_args": {"method": "fgsm_rs", "eps": "8/255"}},
    {"class_path": "medrobust.callbacks.RobustValidation", "init_args": {"steps": 2}},
    {
        "class_path": "medrobust.callbacks.RobustnessEvaluation",
        "init_args": {"attacks": ["fgsm", "pgd"], "linf_eps": ["8/255"], "l2_eps": [], "pgd_steps": 2},
    },
    {"class_path": "medrobust.callbacks.ShiftEvaluation"},
]


def ddp_fit(tmp_path, data: list[str], subsample: str, in_process: bool = False):
    config = {"trainer": {"callbacks": CALLBACKS}, "checkpoint": {"rule": "robust_bal_acc"}}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        result = (medrobust_in_process if in_process else medrobust)(
            "fit",
            "--config",
            QUICKSTART,
            "--config",
            str(tmp_path / "ddp.yaml"),
            *TINY,
            *[a for a in data if not a.startswith("--data.subsample")],
            f"--data.subsample={subsample}",
            "--data.shifts=[corruption:gaussian_noise@5]",
            "--data.batch_size=16",
            "--data.eval_batch_size=1",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
            "--system_metrics.enabled=false",
            cwd=tmp_path,
            MLFLOW_TRACKING_URI=uri,
            **({} if in_process else {"timeout": 240}),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a process waited in a reduction that another never joined")
    return result, uri


def test_fewer_evaluation_samples_than_processes_is_refused(tmp_path, pneumonia_data_args) -> None:
    # refused before any process is launched, so in this process
    result, uri = ddp_fit(tmp_path, pneumonia_data_args, "{train: 64, val: 1, test: 1}", in_process=True)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "fewer samples than the 2 processes" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists() or runs(uri) == []


def test_uneven_shards_count_every_sample_once(tmp_path, pneumonia_data_args) -> None:
    result, uri = ddp_fit(tmp_path, pneumonia_data_args, "{train: 64, val: 3, test: 3}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(uri)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert metrics["test/adv/worst/linf_8_255/n"] == 3 and "test/shift/gaussian_noise/s5/bal_acc" in metrics
    assert "val/robust/bal_acc" in metrics and "train/co_guard/pgd_acc" in metrics
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "val/auroc")) == 2
    matrix = json.loads(
        Path(
            MlflowClient(uri).download_artifacts(run.info.run_id, "confusion_matrix_test.json", str(tmp_path))
        ).read_text()
    )["matrix"]
    assert sum(map(sum, matrix)) == 3
