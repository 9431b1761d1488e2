"""README's "Write your own callback": the worked example runs from a user's working directory (no PYTHONPATH),
leaves its seams in the run, and its own input error is said in one line; a callback type error too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_cli import QUICKSTART, TINY, medrobust, medrobust_in_process, runs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gradient_penalty.py"
MIXUP = Path(__file__).resolve().parents[1] / "examples" / "mixup.py"
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_callback() -> str:
    """The code block of the README's "Write your own callback", as written there."""
    section = README.read_text().split("## Write your own callback", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_callback_runs_as_written(tmp_path, pneumonia_data_args) -> None:
    (tmp_path / "my_defence.py").write_text(readme_callback())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--system_metrics.enabled=false"]
    # through the entry point in this process (importing my_defence.py from the working directory, as the command
    # does); the example below runs as a subprocess
    noise = "--trainer.callbacks+=my_defence.InputNoise"
    result = medrobust_in_process(*args, noise, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
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


def test_mixup_example_trains_on_soft_labels(tmp_path, pneumonia_data_args) -> None:
    """Issue 24.4: an input transform that returns soft labels trains (it crashed on the first step with a shape
    error from the training metrics); labels of another shape are refused with a message."""
    shutil.copy(MIXUP, tmp_path / "mixup.py")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--system_metrics.enabled=false"]
    mixup = ["--trainer.callbacks+=mixup.MixUp", "--trainer.callbacks.alpha=0.4"]
    result = medrobust_in_process(*args, *mixup, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(uri)
    assert run.info.status == "FINISHED" and run.data.tags["seams.input_transforms"] == "mixup"
    assert {"train/acc_epoch", "train/loss_epoch", "test/auroc"} <= set(run.data.metrics)


def test_soft_labels_of_the_wrong_shape_are_refused(synthetic_npz, tmp_path) -> None:
    from conftest import quiet_trainer

    from medrobust.datamodules.medmnist import MedMNISTDataModule
    from medrobust.lightning_modules.classifier import ClassifierModule
    from medrobust.utilities.errors import InputError

    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz()), batch_size=8)
    model = ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)
    model.add_input_transform("bad", lambda x, y: (x, y.float()))  # float class indices, not probabilities
    with pytest.raises(InputError, match=r"soft labels must be per-class probabilities of shape \(8, 2\)"):
        quiet_trainer(tmp_path, max_steps=1).fit(model, dm)
