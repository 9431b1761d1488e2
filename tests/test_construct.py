"""``medrobust construct`` (Ilyas et al.'s constructed datasets), with real Trainers, real MLflow stores and a real
SIGKILL, on synthetic MedMNIST-format files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, quiet_trainer, subprocess_env
from mlflow import MlflowClient

from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.cli import MedRobustCLI
from medrobust.experiments.construction.construct import construct_main
from medrobust.lightning_modules.attacks.threat_model import L2Threat, LinfThreat
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.features.feature_datasets import paper_settings, quantize_within
from medrobust.lightning_modules.nets.normalized_classifier import NormalizedClassifier
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5


def source_checkpoint(tmp_path: Path, data: Path, flag: str) -> Path:
    """A model trained for a few steps on ``data``, saved with its datamodule's hyperparameters."""
    dm = MedMNISTDataModule(flag, path=str(data), batch_size=16)
    model = ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)
    trainer = quiet_trainer(tmp_path / f"train_{flag}", max_steps=3, limit_val_batches=1)
    trainer.fit(model, dm)
    path = tmp_path / f"{flag}.ckpt"
    trainer.save_checkpoint(path)
    return path


def build(source: Path, out: Path, *args: str) -> None:
    assert construct_main([str(source), "--out", str(out), "--no-mlflow", "--chunk-size", "16", *args]) == 0


def as_float(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float() / 255
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


@pytest.mark.parametrize(("flag", "norm", "eps"), [("bloodmnist", "l2", "0.5"), ("pneumoniamnist", "linf", "0.03")])
def test_det_stays_in_the_box_and_the_ball_and_relabels(tmp_path, synthetic_npz, flag, norm, eps) -> None:
    """Every image in [0, 1] (uint8) and within the budget; det labels (y + 1) mod C (8 classes, RGB, for
    bloodmnist); val and test are the original splits."""
    data = synthetic_npz(flag)
    out = tmp_path / "det.npz"
    build(source_checkpoint(tmp_path, data, flag), out, "--kind", "det", "--norm", norm, "--eps", eps, "--steps", "3")
    with np.load(data) as original, np.load(out) as built:
        assert built["train_images"].dtype == np.uint8 and built["train_images"].shape == original["train_images"].shape
        threat = (L2Threat if norm == "l2" else LinfThreat)(float(eps))
        distance = threat.distance(as_float(built["train_images"]), as_float(original["train_images"]))
        assert distance.max() <= float(eps) + 1e-6 and distance.mean() > 0.5 * float(eps)  # moved, inside
        num_classes = 8 if flag == "bloodmnist" else 2
        assert np.array_equal(built["train_labels"], (original["train_labels"] + 1) % num_classes)
        for key in ("val_images", "val_labels", "test_images", "test_labels"):
            assert np.array_equal(built[key], original[key])
    assert not (tmp_path / "det.npz.parts").exists()  # chunks removed once the file is whole


def test_quantizing_keeps_a_full_l2_ball() -> None:
    """Nearest rounding of an attack that fills the L2 ball leaves it; the scaled rounding never does."""
    x = torch.randint(0, 256, (32, 1, 28, 28)).float() / 255
    eps, _ = paper_settings((1, 28, 28))
    threat = L2Threat(eps)
    x_adv = threat.project(x + torch.randn_like(x), x)
    nearest = ((x_adv * 255).round() / 255 - x).flatten(1).norm(dim=1)
    assert (nearest > eps).any()
    kept = quantize_within(x, x_adv, threat).float() / 255
    assert threat.distance(kept, x).max() <= eps * (1 + 1e-6) and threat.distance(kept, x).min() > 0.9 * eps


def test_representation_matching_keeps_labels_and_closes_the_feature_gap(tmp_path, synthetic_npz) -> None:
    data = synthetic_npz("pneumoniamnist")
    out = tmp_path / "robust.npz"
    build(source_checkpoint(tmp_path, data, "pneumoniamnist"), out, "--kind", "robust", "--steps", "30")
    with np.load(data) as original, np.load(out) as built:
        assert np.array_equal(built["train_labels"], original["train_labels"])
        assert not np.array_equal(built["train_images"], original["train_images"])


def test_matching_keeps_each_images_best_iterate_and_stops_when_converged() -> None:
    """Issue 25.18: a fixed normalised step overshoots near the optimum, so the last iterate is not the best one;
    each image keeps its lowest-loss iterate, and with a tolerance the matching stops once none improves."""
    from medrobust.lightning_modules.features.feature_datasets import match_representation, pre_logits

    torch.manual_seed(0)
    net = NormalizedClassifier.from_timm("test_resnet", num_classes=2, in_chans=1).eval()
    start, target = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    goal = pre_logits(net, target).detach()

    def loss(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (pre_logits(net, x) - goal).norm(dim=1)

    best, ran = match_representation(net, start, target, steps=40, step=0.5)
    assert ran == 40
    trace, x = [loss(start)], start.clone()
    for _ in range(40):  # the same descent, every iterate scored
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad((pre_logits(net, x) - goal).norm(dim=1).sum(), x)
        x = (x.detach() - 0.5 * grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)).clamp_(0, 1)
        trace.append(loss(x))
    lowest = torch.stack(trace).min(0).values
    torch.testing.assert_close(loss(best), lowest, atol=1e-4, rtol=1e-4)
    assert (lowest < trace[-1] - 1e-6).any()  # the last iterate is not the best for some image
    _, stopped = match_representation(net, start, target, steps=1000, step=0.5, tolerance=1e-3, patience=20)
    assert stopped < 1000


def test_a_det_set_that_does_not_fool_its_source_is_marked_invalid(tmp_path, synthetic_npz, tracking_uri) -> None:
    """Issue 25.18: D_det at a tiny budget cannot relabel: its run says construct.valid=false, with the rate."""
    data = synthetic_npz("pneumoniamnist")
    source = source_checkpoint(tmp_path, data, "pneumoniamnist")
    out = tmp_path / "weak.npz"
    args = [str(source), "--kind", "det", "--out", str(out), "--eps", "0.01", "--steps", "2", "--run-name", "weak"]
    assert construct_main([*args, "--tracking-uri", tracking_uri, "--experiment-name", "built"]) == 0
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("built").experiment_id])[0]
    assert run.data.tags["construct.valid"] == "false" and run.data.params["construct.min_success"] == "0.95"
    assert run.data.metrics["construct/source_agrees_changed"] < 0.95 and run.data.metrics["construct/valid"] == 0.0


def test_file_round_trips_through_mlflow_and_data_path(tmp_path, synthetic_npz, tracking_uri, monkeypatch) -> None:
    """Logged as an artifact and a dataset input with its MD5 and lineage; ``--data.path`` as ``runs:/``, a run id
    or ``mlflow:<experiment>/<run name>`` trains on the same bytes."""
    data = synthetic_npz("pneumoniamnist")
    source = source_checkpoint(tmp_path, data, "pneumoniamnist")
    out = tmp_path / "det.npz"
    args = [str(source), "--kind", "det", "--out", str(out), "--steps", "2", "--run-name", "det_run"]
    assert construct_main([*args, "--tracking-uri", tracking_uri, "--experiment-name", "built"]) == 0
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("built").experiment_id])[0]
    md5 = file_md5(out)
    assert run.data.params["construct.kind"] == "det" and run.data.params["construct.md5"] == md5
    assert run.data.tags["lineage.source"] == str(source) and run.data.tags["medrobust.artifact"] == "dataset/det.npz"
    digests = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert digests["constructed"] == md5
    assert run.data.metrics["construct/l2_max"] <= paper_settings((1, 28, 28))[0] + 1e-6
    for path in (f"runs:/{run.info.run_id}/dataset/det.npz", run.info.run_id, "mlflow:built/det_run"):
        dm = MedMNISTDataModule("pneumoniamnist", path=path, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        assert dm.md5 == md5 and dm.describe()["source_uri"] == path
    with np.load(out) as built:  # the very file: labels as constructed
        assert torch.equal(dm.datasets["train"].labels, torch.from_numpy(built["train_labels"][:, 0]).long())
    # medrobust fit fetches it from the store its logger names, even when $MLFLOW_TRACKING_URI names another
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    config = str(REPO / "experiments" / "configs" / "quickstart.yaml")
    logger = [
        f"--trainer.logger.init_args.{k}={v}" for k, v in (("tracking_uri", tracking_uri), ("experiment_name", "fit"))
    ]
    MedRobustCLI(
        args=["fit", "--config", config, "--model.model_name=test_resnet", "--trainer.max_epochs=1", *logger,
              "--trainer.enable_progress_bar=false", "--test_after_fit=false", "--data.path=mlflow:built/det_run"]
    )  # fmt: skip
    fit_run = client.search_runs([client.get_experiment_by_name("fit").experiment_id])[0]
    assert fit_run.data.tags["data.md5"] == md5 and fit_run.data.tags["data.source_uri"] == "mlflow:built/det_run"
    # issue 25.10: a model trained on a constructed dataset draws its initial weights apart from its source's
    assert fit_run.data.params["init.independent_of"] == f"data:{md5}"
    assert md5 in {i.dataset.digest for i in fit_run.inputs.dataset_inputs}


@pytest.mark.slow  # about 20 s; test_file_round_trips_through_mlflow_and_data_path constructs a file by default
def test_resume_after_sigkill_gives_the_same_file(tmp_path, synthetic_npz) -> None:
    data = synthetic_npz("pneumoniamnist")
    source = source_checkpoint(tmp_path, data, "pneumoniamnist")
    common = [str(source), "--kind", "rand", "--steps", "100", "--chunk-size", "8", "--no-mlflow", "--seed", "3"]
    killed = tmp_path / "killed.npz"
    cmd = [sys.executable, "-m", "medrobust.experiments", "construct", *common, "--out", str(killed)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "killed.npz.parts"
    deadline = time.time() + 120
    while not (parts / "chunk_00001.npz").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in parts.glob("chunk_*.npz"))
    assert not killed.exists() and 2 <= len(done) < 6, (done, proc.stderr.read().decode()[-2000:])
    assert construct_main([*common, "--out", str(killed)]) == 0  # continues from the finished chunks
    whole = tmp_path / "whole.npz"
    assert construct_main([*common, "--out", str(whole)]) == 0
    assert file_md5(killed) == file_md5(whole)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--kind", "dett"], "Unknown construction kind 'dett'; valid: \\['det', 'rand', 'robust', 'nonrobust'\\]"),
        (["--kind", "det", "--eps", "0"], "eps must be > 0"),
        (["--kind", "det", "--eps", "-0.1"], "eps must be > 0"),
        (["--kind", "robust", "--eps", "0.5"], "eps does not apply"),
        (["--kind", "det", "--norm", "l1"], "Unknown norm"),
        (
            ["--kind", "det", "--data-path", "{blood}", "--flag", "bloodmnist"],
            "is a multiclass model with 2 classes and 1 channels; bloodmnist is multiclass with 8 classes and 3",
        ),
    ],
)
def test_bad_input_is_refused_clearly(tmp_path, synthetic_npz, args, match) -> None:
    data = synthetic_npz("pneumoniamnist")
    source = source_checkpoint(tmp_path, data, "pneumoniamnist")
    args = [a.replace("{blood}", str(synthetic_npz("bloodmnist"))) for a in args]
    with pytest.raises(InputError, match=match):
        construct_main([str(source), "--out", str(tmp_path / "x.npz"), "--no-mlflow", *args])


def test_cli_errors_in_one_line(tmp_path) -> None:
    """From the command line, bad input exits 2 with one message; an existing --out is refused before any work."""
    done = subprocess.run(
        [sys.executable, "-m", "medrobust.experiments", "construct", "missing.ckpt", "--kind", "det", "--out", "a.npz"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Construction source checkpoint 'missing.ckpt' does not" in done.stderr, done.stderr
    (tmp_path / "exists.npz").write_bytes(b"")
    with pytest.raises(InputError, match="exists.npz exists; pass --overwrite"):
        construct_main(["missing.ckpt", "--kind", "det", "--out", str(tmp_path / "exists.npz")])
