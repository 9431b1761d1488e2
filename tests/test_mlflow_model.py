"""Issue 26.1-26.2: a fit's selected checkpoint as an MLflow model, loaded with MLflow alone, predicting what the
module predicts; the test metrics linked to it; bad input refused with the expected shape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import SHARED_MEDMNIST, subprocess_env, write_medmnist_npz
from mlflow import MlflowClient
from test_cli import QUICKSTART, medrobust_in_process

from medrobust.callbacks.helpers.checkpoint_upload import log_checkpoint
from medrobust.callbacks.helpers.pyfunc_image_classifier import as_images
from medrobust.experiments.registry.selection_rule import SelectionRule
from medrobust.experiments.tracking.mlflow_server import free_port
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.features.teacher import load_teacher
from medrobust.lightning_modules.nets.image_probabilities import ImageProbabilities
from medrobust.utilities.checkpoint_weights import program_weights, with_weights, without_weights
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.model_checkpoint import fetch_checkpoint

#: (flag, where its file comes from): the real binary PneumoniaMNIST, synthetic multi-class RGB and multi-label files
CASES = [("pneumoniamnist", "real"), ("bloodmnist", "synthetic"), ("chestmnist", "synthetic")]


def tiny_fit(
    tmp_path: Path, tracking_uri: str, *data: str, epochs: int = 1, subsample: str = "{train: 96, test: 32}"
) -> tuple:
    """The quickstart with ``test_resnet`` on the ``data`` arguments, subsampled, in this process; the finished
    command and the experiment's one run."""
    fit = medrobust_in_process(
        "fit", "--config", QUICKSTART, *data, f"--data.subsample={subsample}", "--model.model_name=test_resnet",
        f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.tracking_uri={tracking_uri}", cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    return fit, run


@pytest.fixture
def store(tracking_uri):
    """``tracking_uri`` as MLflow's global URI too (``models:/`` URIs resolve through it), restored afterwards."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(tracking_uri):
        yield tracking_uri


@pytest.mark.parametrize(("flag", "source"), CASES)
def test_the_selected_checkpoint_is_a_model_that_predicts_what_the_module_predicts(tmp_path, store, flag, source):
    tracking_uri = store
    if source == "real":
        if not (SHARED_MEDMNIST / f"{flag}.npz").is_file():
            pytest.skip("the real PneumoniaMNIST is in ../shared")
        file, data = SHARED_MEDMNIST / f"{flag}.npz", [f"--data.root={SHARED_MEDMNIST}"]
    else:
        file = write_medmnist_npz(tmp_path / f"{flag}.npz", flag, n=(96, 32, 32))
        data = [f"--data.path={file}"]
    subsample = "{train: 96, val: 32, test: 32}"
    _, run = tiny_fit(tmp_path, tracking_uri, f"--data.flag={flag}", *data, epochs=2, subsample=subsample)
    client = MlflowClient(tracking_uri)
    model_id = run.data.tags["model.id"]
    logged = client.get_logged_model(model_id)
    assert (logged.experiment_id, logged.source_run_id) == (run.info.experiment_id, run.info.run_id)
    assert str(logged.status) == "READY" and logged.name == "model"
    # the weights once: the model holds the checkpoint (its weights in model.pt2), the run no checkpoints/best.ckpt
    assert not client.list_artifacts(run.info.run_id, "checkpoints")
    files = {f.path: f.file_size for f in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert files["artifacts/checkpoint.ckpt"] < 100_000 < files["artifacts/model.pt2"]
    best, fetched_run = fetch_checkpoint(f"models:/{model_id}", tracking_uri, tmp_path / "best")
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    local = torch.load(run.data.tags["best_checkpoint"], map_location="cpu", weights_only=True)
    assert fetched_run == run.info.run_id and checkpoint["state_dict"].keys() == local["state_dict"].keys()
    assert list(checkpoint["state_dict"]) == list(local["state_dict"])  # the module's own order
    assert all(
        torch.equal(v, local["state_dict"][k]) and v.dtype == local["state_dict"][k].dtype
        for k, v in checkpoint["state_dict"].items()
    )
    assert checkpoint["hyper_parameters"] == local["hyper_parameters"] and "optimizer_states" not in checkpoint
    again, _ = fetch_checkpoint(run.info.run_id, tracking_uri, tmp_path / "again")  # a run id: its model's
    assert file_md5(again) == file_md5(best)  # rebuilt byte for byte: the MD5 names the weights
    (output,) = run.outputs.model_outputs  # at the selected checkpoint's global step: its epoch's val/* are linked
    assert output.model_id == model_id and output.step == checkpoint["global_step"]
    assert checkpoint["epoch"] == int(run.data.tags["selection.epoch"])
    val = {m.key: m.value for m in logged.metrics if m.key.startswith("val/")}
    at_step = [m.value for m in client.get_metric_history(run.info.run_id, "val/auroc") if m.step == output.step]
    assert at_step and val["val/auroc"] == at_step[-1]

    # the test metrics, linked to the model and to the test split, without a second point in the run's history
    linked = {m.key: m for m in logged.metrics}
    assert {"test/bal_acc", "test/auroc", "summary/clean_bal_acc"} <= set(linked)
    assert linked["test/bal_acc"].dataset_name == f"{flag}_28/test"
    assert linked["test/bal_acc"].dataset_digest == run.data.tags["data.md5"]
    assert linked["test/bal_acc"].value == run.data.metrics["test/bal_acc"]
    assert len(client.get_metric_history(run.info.run_id, "test/bal_acc")) == 1
    ranked = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="metrics.`summary/clean_bal_acc` >= 0",
        order_by=[{"field_name": "metrics.summary/clean_bal_acc", "ascending": False}],
    )  # fmt: skip
    assert [m.model_id for m in ranked] == [model_id]

    # MLflow alone loads it; raw MedMNIST test images in, the module's probabilities out
    model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    raw = np.load(file)["test_images"][:16]
    module = ClassifierModule.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    x = torch.from_numpy(raw).float() / 255
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = module(x)
    expected = logits.sigmoid() if flag == "chestmnist" else logits.softmax(-1)
    predicted = model.predict(raw)
    assert predicted.dtype == np.float32 and predicted.shape == expected.shape
    assert np.abs(predicted - expected.numpy()).max() <= 1e-6
    assert np.abs(model.predict(raw.astype(np.float32) / 255) - predicted).max() <= 1e-6  # float in [0, 1] alike

    card = model.metadata.metadata["model_card"]
    assert card["dataset"]["flag"] == flag and card["dataset"]["md5"] == run.data.tags["data.md5"] == file_md5(file)
    assert card["task"] == ("multilabel" if flag == "chestmnist" else "multiclass")
    assert len(card["class_names"]) == card["num_classes"] == expected.shape[1]
    assert card["selection"]["rule"] == run.data.tags["selection.rule"]
    assert card["selection"]["epoch"] == int(run.data.tags["selection.epoch"])
    assert card["trained_against"] == "none (standard training)" and card["source_run_id"] == run.info.run_id
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}"))
    assert card["checkpoint"]["md5"] == file_md5(files / "artifacts" / "checkpoint.ckpt")
    requirements = (files / "requirements.txt").read_text()
    assert all(f"{name}==" in requirements for name in ("mlflow", "torch", "numpy"))
    size = sum(f.file_size or 0 for f in client.list_logged_model_artifacts(model_id, "artifacts"))
    print(f"{flag}: model.pt2 of test_resnet {size / 1e6:.2f} MB")
    with pytest.raises(Exception, match=r"got shape \(28, 20[,)].*expected"):
        model.predict(raw[0][:, :20])
    if source == "real":
        check_models_uris(tmp_path, tracking_uri, model_id, run, best)


def check_models_uris(tmp_path: Path, tracking_uri: str, model_id: str, run, best: Path) -> None:
    """Issue 26.3: ``models:/NAME@ALIAS`` and ``models:/<model_id>`` wherever a model is taken: a test run (its
    metrics linked to the model too), a teacher or construction source; an unknown one refused in one line."""
    client = MlflowClient(tracking_uri)
    # issue 26.4: registered by a rule written in the command, refused when nothing meets it
    rule = "max summary/clean_bal_acc if summary/clean_auroc >= best - 0.02"
    done = medrobust_in_process("register", "quickstart", "--name", "pneumonia_quick", "--select", rule, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"picked run {run.info.run_name!r}" in done.stdout and "models:/pneumonia_quick@champion" in done.stdout
    version = client.get_model_version_by_alias("pneumonia_quick", "champion")
    assert version.run_id == run.info.run_id and version.tags["select.rule"] == rule
    assert (
        json.loads(version.tags["select.values"])["summary/clean_bal_acc"] == run.data.metrics["summary/clean_bal_acc"]
    )
    for bad, message in [
        ("max summary/clean_bal_acc if summary/clean_auroc >= 2", "no run has summary/clean_auroc >= 2"),
        ("max summary/no_such_metric", "none of the 1 runs has summary/no_such_metric"),
        ("the best one", "is not a rule; write max|min METRIC"),
        ("max test/auroc --alias latest", "MLflow reserves 'latest'"),
    ]:
        select, *alias = bad.split(" --alias ")
        args = ["register", "quickstart", "--name", "x", "--select", select, *(["--alias", *alias] if alias else [])]
        refused = medrobust_in_process(*args, cwd=tmp_path)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr[-2000:]
    assert len(client.search_model_versions("name='pneumonia_quick'")) == 1
    # the trade-off report names the registered point (test_sweep checks the figure's star)
    report = medrobust_in_process("report", "quickstart", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    (report_run,) = client.search_runs([run.info.experiment_id], "attributes.run_name = 'tradeoff_report'")
    saved = client.download_artifacts(report_run.info.run_id, "tradeoff.json", str(tmp_path))
    assert json.loads(Path(saved).read_text())["registered"] == {run.info.run_id: "pneumonia_quick v1 @champion"}
    test = medrobust_in_process(
        "test", "--config", QUICKSTART, f"--data.root={SHARED_MEDMNIST}", "--data.subsample={test: 32}",
        "--ckpt_path=models:/pneumonia_quick@champion", "--trainer.logger.init_args.experiment_name=retest",
        f"--trainer.logger.init_args.tracking_uri={tracking_uri}", cwd=tmp_path,
    )  # fmt: skip
    assert test.returncode == 0, test.stderr[-3000:]
    (retest,) = client.search_runs([client.get_experiment_by_name("retest").experiment_id])
    tags = retest.data.tags
    assert tags["test.checkpoint.model_id"] == model_id and tags["test.checkpoint.run_id"] == run.info.run_id
    linked = [m for m in client.get_logged_model(model_id).metrics if m.key == "test/bal_acc"]
    assert {m.run_id for m in linked} == {run.info.run_id, retest.info.run_id}  # the fit's test and this one
    teacher = load_teacher(f"models:/{model_id}", tracking_uri)
    assert teacher.run_id == run.info.run_id and teacher.md5 == tags["test.checkpoint.md5"]
    for wrong, message in [
        ("models:/pneumonia_quick@nobody", "not found"),
        ("models:/m-0123456789abcdef0123456789abcdef", "not found"),
        ("models:/pneumonia_quick/latest", "models:/<name>/<version>"),
    ]:
        with pytest.raises(InputError, match=message):
            load_teacher(wrong, tracking_uri)
    # the run's artifacts changing later (a resumed fit) changes nothing; the model's own checkpoint replaced does
    client.log_artifact(run.info.run_id, str(best), "checkpoints")
    assert load_teacher("models:/pneumonia_quick@champion", tracking_uri).md5 == teacher.md5
    assert load_teacher(run.info.run_id, tracking_uri).md5 == teacher.md5  # a run id: its model, not that artifact
    logged = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://")) / "artifacts"
    for name, change in [("checkpoint.ckpt", lambda b: b.replace(b"pneumoniamnist", b"pneumoniamnisx")),
                         ("model.pt2", lambda b: b + b"\0")]:  # fmt: skip
        stored = logged / name
        original = stored.read_bytes()
        stored.write_bytes(change(original))
        with pytest.raises(InputError, match=f"{name} .* is not the file the model was logged with"):
            load_teacher("models:/pneumonia_quick@champion", tracking_uri)
        stored.write_bytes(original)
    # a run whose model is gone falls back to its own checkpoints/best.ckpt
    client.delete_logged_model(model_id)
    fallback, _ = fetch_checkpoint(run.info.run_id, tracking_uri, tmp_path / "fallback")
    assert file_md5(fallback) == file_md5(best)


def test_a_resumed_fit_that_uploads_its_checkpoint_drops_the_earlier_model_tag(tmp_path, tracking_uri) -> None:
    """The run's ``model.id`` then names a model of an earlier fit: run-id sources would take its older weights."""
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("resumed")).info.run_id
    checkpoint = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "optimizer_states": [{"lr": 1}], "epoch": 3}, checkpoint)
    log_checkpoint(client, run_id, checkpoint, resumed=True)  # no model tag yet: nothing to drop, no error
    client.set_tag(run_id, "model.id", "m-0123456789abcdef0123456789abcdef")
    log_checkpoint(client, run_id, checkpoint, resumed=True)
    tags = client.get_run(run_id).data.tags
    assert "model.id" not in tags
    uploaded = client.download_artifacts(run_id, "checkpoints/best.ckpt", str(tmp_path / "uploaded"))
    assert tags["best_checkpoint.md5"] == file_md5(uploaded) and "optimizer_states" not in torch.load(uploaded)
    fetched, _ = fetch_checkpoint(run_id, tracking_uri, tmp_path / "fetched")
    assert file_md5(fetched) == file_md5(uploaded)


def test_a_model_that_cannot_be_exported_does_not_fail_the_run(tmp_path, tracking_uri, monkeypatch) -> None:
    """The model is an addition: an export error leaves the run FINISHED, tested, and tagged with the error."""
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip("the real PneumoniaMNIST is in ../shared")

    def refuse(self, in_chans: int, size: int) -> None:
        raise RuntimeError("this network cannot be traced")

    monkeypatch.setattr(ImageProbabilities, "export", refuse)  # fault injection: any export error
    fit, run = tiny_fit(tmp_path, tracking_uri, f"--data.root={SHARED_MEDMNIST}")
    assert run.info.status == "FINISHED" and "test/bal_acc" in run.data.metrics
    assert "this network cannot be traced" in run.data.tags["model.error"] and "model.id" not in run.data.tags
    assert [a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/best.ckpt"
    ]  # the weights go into the run all the same
    assert "the run's MLflow model was not logged" in fit.stderr


def test_a_checkpoint_without_its_weights_is_rebuilt_from_the_program(tmp_path) -> None:
    """The weights once: a checkpoint loses exactly what the exported program holds, and gets it back bit for bit."""
    module = ClassifierModule(model_name="test_resnet", num_classes=3, in_chans=1, small_input=True, pretrained=False)
    state = {**module.state_dict(), "extra.buffer": torch.ones(2)}  # held by no program: stays in the checkpoint
    state["net.backbone.fc.bias"] = state["net.backbone.fc.bias"].bfloat16()  # another dtype: not the program's
    checkpoint = {"state_dict": state, "hyper_parameters": dict(module.hparams), "optimizer_states": [{"x": 1}]}
    program = ImageProbabilities(module.net, "multiclass").export(1, 28)
    torch.export.save(program, tmp_path / "model.pt2")
    light = without_weights(checkpoint, program)
    assert set(light["state_dict"]) == {"extra.buffer", "net.backbone.fc.bias"} and "optimizer_states" not in light
    torch.save(light, tmp_path / "light.ckpt")
    assert (tmp_path / "light.ckpt").stat().st_size < 20_000
    full = with_weights(torch.load(tmp_path / "light.ckpt", weights_only=True), tmp_path / "model.pt2")
    assert list(full["state_dict"]) == list(state) and "weights_in_program" not in full  # in Lightning's order
    assert all(
        torch.equal(full["state_dict"][k], v) and full["state_dict"][k].dtype == v.dtype for k, v in state.items()
    )
    weights = program_weights(tmp_path / "model.pt2")  # read as raw records: what torch.export.load reads
    loaded = torch.export.load(tmp_path / "model.pt2").state_dict
    assert weights.keys() == loaded.keys()
    assert all(torch.equal(v, weights[k]) and v.dtype == weights[k].dtype for k, v in loaded.items())
    # a weight stored pickled (a tensor subclass, or a crafted file) is refused, never unpickled
    with zipfile.ZipFile(tmp_path / "model.pt2") as source, zipfile.ZipFile(tmp_path / "pickled.pt2", "w") as crafted:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            crafted.writestr(name, data)
    with pytest.raises(ValueError, match="weights stored as pickled objects are not read"):
        program_weights(tmp_path / "pickled.pt2")
    assert with_weights(full, tmp_path / "model.pt2") is full  # a full checkpoint as it is
    light["weights_in_program"]["keys"].append("net.no_such_weight")
    with pytest.raises(ValueError, match="lacks 1 weight"):
        with_weights(light, tmp_path / "model.pt2")


def test_bad_input_is_refused_naming_the_expected_shape() -> None:
    grey = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    reference = as_images(grey, 28, 1)
    assert reference.shape == (3, 1, 28, 28) and reference.dtype == torch.float32
    for same in (grey[..., None], grey[:, None], grey / 255.0, grey.astype(np.int64)):
        assert torch.allclose(as_images(same, 28, 1), reference)
    assert torch.equal(as_images(grey[0], 28, 1), reference[:1])
    rgb = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    assert torch.equal(as_images(rgb, 28, 3), as_images(rgb.transpose(0, 3, 1, 2), 28, 3))
    assert torch.equal(as_images(rgb[0], 28, 3), as_images(rgb, 28, 3)[:1])
    bad = {
        "got shape (3, 32, 32)": (np.zeros((3, 32, 32), np.uint8), 1),  # another size: never resized
        "got shape (2, 28, 28, 3)": (rgb, 1),  # RGB into a grey model
        "got shape (3, 28, 28)": (grey, 3),  # grey into an RGB model
        "got shape (784,)": (grey[0].ravel(), 1),
        "got NaN or infinite values": (np.full((2, 28, 28), np.nan), 1),
        "float images must lie in [0, 1]": (grey * 1.0, 1),  # 0-255 as floats
        "integer images must lie in 0-255": (grey.astype(np.int64) - 1, 1),
        "got an empty batch": (np.zeros((0, 28, 28), np.uint8), 1),
        "got bool values": (grey > 0, 1),
        "a table is not images": ({"x": [1]}, 1),
    }
    for message, (data, in_chans) in bad.items():
        with pytest.raises(
            ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
        ) as err:
            as_images(data, 28, in_chans)
        assert "expected " in str(err.value) and "28x28" in str(err.value)


def test_a_selection_rule_picks_the_most_robust_run_near_the_best_clean_one() -> None:
    runs = {
        "a": {"clean": 0.90, "robust": 0.40},
        "b": {"clean": 0.89, "robust": 0.55},  # within 2 points of the best clean: the pick
        "c": {"clean": 0.80, "robust": 0.70},  # most robust, but 10 points below
        "d": {"clean": float("nan"), "robust": 0.99},  # no clean value: compared only by rules without clean
        "e": {"robust": 0.98},
    }
    chosen, values = SelectionRule.parse("max robust if clean >= best - 0.02").choose(runs)
    assert chosen == "b" and values["reference"] == pytest.approx(0.88) and values["compared"] == 3
    assert SelectionRule.parse("max robust").choose(runs)[0] == "d"
    assert SelectionRule.parse("min clean if robust >= 0.5").choose(runs)[0] == "c"
    assert SelectionRule.parse("max clean if robust <= best + 0.1").choose(runs)[0] == "a"
    with pytest.raises(InputError, match="no run has clean >= 0.95"):
        SelectionRule.parse("max robust if clean >= 0.95").choose(runs)
    for text in ("max", "best robust", "max robust if clean > 0.5", "max robust if clean >= best * 2"):
        with pytest.raises(InputError, match="is not a rule"):
            SelectionRule.parse(text)


@pytest.mark.slow  # about a minute; test_the_selected_checkpoint_is_a_model... loads the same model in process
def test_the_champion_is_served_over_http_and_answers_what_the_module_answers(tmp_path, store) -> None:
    """Issue 26.5: ``mlflow models serve -m models:/NAME@champion --env-manager local`` on a loopback port answers a
    JSON batch of raw test images with the in-process probabilities, and stops within a bounded time."""
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip("the real PneumoniaMNIST is in ../shared")
    tiny_fit(tmp_path, store, f"--data.root={SHARED_MEDMNIST}")
    done = medrobust_in_process(
        "register", "quickstart", "--name", "served", "--select", "max test/auroc", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    raw = np.load(SHARED_MEDMNIST / "pneumoniamnist.npz")["test_images"][:8]
    expected = mlflow.pyfunc.load_model("models:/served@champion").predict(raw)
    port = free_port()
    env = subprocess_env(MLFLOW_TRACKING_URI=store)
    command = ["mlflow", "models", "serve", "-m", "models:/served@champion", "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env, start_new_session=True,
        stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 (closed with the process)
    )  # fmt: skip
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as ping:
                    if ping.status == 200:
                        break
            except OSError:  # not listening yet (URLError, ConnectionError)
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        status, answer = post(f"{url}/invocations", {"inputs": raw.tolist()})
        assert status == 200, answer[-2000:]
        served = np.asarray(json.loads(answer)["predictions"], dtype=np.float32)
        assert served.shape == expected.shape and np.abs(served - expected).max() <= 1e-6
        status, answer = post(f"{url}/invocations", {"inputs": raw[:, :20].tolist()})
        assert status >= 400 and "expected grey 28x28 images" in answer, answer[-2000:]
    finally:
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        print(f"served and stopped; stopping took {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 20


def post(url: str, body: dict) -> tuple[int, str]:
    """POST ``body`` as JSON; the status and the response text, errors included."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
