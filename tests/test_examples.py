"""README's "Write your own callback": the worked example runs from a user's working directory (no PYTHONPATH),
leaves its seams in the run, and its own input error is said in one line; a callback type error too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from test_cli import QUICKSTART, TINY, medrobust, medrobust_in_process, runs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gradient_penalty.py"
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_callback() -> str:
    """The code block of the README's "Write your own callback", as written there."""
    section = README.read_text().split("## Write your own callback", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_callback_runs_as_written(tmp_path, pneumonia_data_args) -> None:
    (tmp_path / "my_defence.py").write_text(readme_callback())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--system_metrics.enabled=false"]
    result = medrobust(*args, "--trainer.callbacks+=my_defence.InputNoise", cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(uri)
    assert run.data.tags["seams.input_transforms"] == "noise" and run.data.params["callbacks.InputNoise.std"] == "0.02"


def test_example_callback_runs_from_the_working_directory(tmp_path, pneumonia_data_args) -> None:
    shutil.copy(EXAMPLE, tmp_path / "my_defence.py")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--system_metrics.enabled=false"]
    result = medrobust(
        *args,
        "--trainer.callbacks+=my_defence.GradientPenalty",
        "--trainer.callbacks.lam=0.05",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
        PYTHONPATH=os.environ.get("PYTHONPATH", ""),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(uri)
    assert {"train/loss/gradpen/input_grad_epoch", "train/loss/gradpen/head_epoch"} <= set(run.data.metrics)
    tags, params = run.data.tags, run.data.params
    assert tags["seams.input_transforms"] == "gradpen_noise" and tags["seams.feature_taps"] == "layer3"
    assert tags["seams.loss_terms"] == "task, gradpen/input_grad, gradpen/head"
    assert tags["seams.auxiliary_modules"] == "gradpen_head"
    assert params["callbacks.GradientPenalty.lam"] == "0.05"  # settings under the class name, not a list position

    bad = medrobust_in_process(
        *args,
        "--trainer.callbacks+=my_defence.GradientPenalty",
        "--trainer.callbacks.lam=-1",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    assert bad.returncode == 2 and "must be >= 0" in bad.stderr and "Traceback" not in bad.stderr
    typo = medrobust_in_process(
        *args,
        "--trainer.callbacks+=medrobust.callbacks.AdversarialTraining",
        "--trainer.callbacks.steps=abc",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    assert typo.returncode == 2
    assert 'trainer.callbacks: medrobust.callbacks.AdversarialTraining: Parser key "steps"' in typo.stderr
    assert "Subtypes" not in typo.stderr
    assert len(runs(uri)) == 1  # bad input left no run
