"""Issue 26.6: a tracking server that goes away does not lose a run. Real ``mlflow server`` processes on loopback,
stopped and started again on the same port and store: the journaled client keeps writing while the server is away
and sends the backlog once it is back; a server that never returns leaves a journal that ``medrobust sync`` sends,
twice without duplicates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_MEDMNIST, subprocess_env
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric

from medrobust.experiments.tracking.buffered_client import BufferedMlflowClient
from medrobust.experiments.tracking.mlflow_server import LocalMlflowServer, free_port
from medrobust.experiments.tracking.run_journal import JournalInUse, RunJournal
from medrobust.experiments.tracking.sync import sync_main
from medrobust.experiments.tracking.tracking_server_away import TrackingServerAway
from medrobust.utilities.model_checkpoint import fetch_checkpoint

QUICKSTART = REPO / "experiments" / "configs" / "quickstart.yaml"


class Server:
    """One store (SQLite and an artifact folder in ``root``) served on one port, stopped and started at will."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: LocalMlflowServer | None = None

    def start(self) -> Server:
        backend, artifacts = f"sqlite:///{self.root / 'server.db'}", str(self.root / "artifacts")
        self.proc = LocalMlflowServer(backend, artifacts, log=self.root / "server.log", port=self.port).wait()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path).start()
    yield server
    server.stop()


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_writes_go_on_while_the_server_is_away_and_arrive_once_it_is_back(tmp_path, server, caplog):
    secret = "s3cr3t-pw"  # a URI with credentials (the server ignores them): used, never written to the journal
    client = BufferedMlflowClient(server.url.replace("http://", f"http://alice:{secret}@"), tmp_path / "unsent")
    experiment = client.create_experiment("outage")
    run_id = client.create_run(experiment).info.run_id
    client.log_param(run_id, "lr", 0.1)
    for step in range(3):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    assert client.flush(30)
    server.stop()
    began = time.monotonic()
    for step in range(3, 8):  # the server is away: each write returns at once
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    client.log_batch(run_id, metrics=[Metric("acc", 0.5, int(time.time() * 1000), 7)])
    client.set_tag(run_id, "phase", "during the outage")
    client.log_figure(run_id, Figure(), "figures/curve.png")  # through log_artifact: copied into the journal
    assert time.monotonic() - began < 2.0
    assert not client.flush(3)  # nothing can be sent
    with pytest.raises(TrackingServerAway, match="unreachable"):
        client.wait = 1
        client.get_run(run_id)  # a read would not see the backlog: a clear error, not minutes of retries
    journal = tmp_path / "unsent" / run_id
    assert (journal / "records.jsonl").is_file()
    assert all(secret not in p.read_text() for p in journal.glob("*.json*"))
    server.start()
    assert client.flush(60), client.pending()
    client.set_terminated(run_id)
    assert client.close(30) == {}
    check = MlflowClient(server.url)
    run = check.get_run(run_id)
    assert history(check, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(8)]  # every step, once
    assert history(check, run_id, "acc") == [(7, 0.5)]
    assert run.data.params == {"lr": "0.1"} and run.data.tags["phase"] == "during the outage"
    assert run.info.status == "FINISHED"
    assert [a.path for a in check.list_artifacts(run_id, "figures")] == ["figures/curve.png"]
    assert not (tmp_path / "unsent" / run_id).exists()  # all sent: the journal is gone
    assert "unreachable" in caplog.text and "is back" in caplog.text and secret not in caplog.text


@pytest.mark.slow  # about 20 s; the outage test above journals and sends by default
def test_a_server_that_never_returns_leaves_a_journal_that_sync_sends_once(tmp_path, server, capsys):
    client = BufferedMlflowClient(server.url, tmp_path / "unsent", wait=60)
    run_id = client.create_run(client.create_experiment("gone")).info.run_id
    client.log_param(run_id, "seed", 0)
    assert client.flush(30)
    server.stop()
    for step in range(5):
        client.log_metric(run_id, "loss", float(step), step=step)
        if step == 2:  # a changed param, merged into one batch with the metrics: the server refuses it alone
            client.log_param(run_id, "seed", 1)
    (tmp_path / "notes.txt").write_text("written while the server was away")
    client.log_artifact(run_id, str(tmp_path / "notes.txt"))
    (tmp_path / "notes.txt").unlink()  # the journal holds its own copy
    client.set_terminated(run_id, "FINISHED")
    assert client.close(2) == {run_id: 8}
    journal = tmp_path / "unsent" / run_id
    replay = shutil.copytree(journal, tmp_path / "copy" / run_id)  # to send the same records a second time
    elsewhere = Server(tmp_path / "elsewhere").start()  # a server without this run: nothing sent, journal kept
    assert _sync(journal, elsewhere.url) == 1 and "is not on" in capsys.readouterr().err
    elsewhere.stop()
    assert (journal / "records.jsonl").is_file()
    assert _sync(journal, server.url) == 1
    assert "unreachable; nothing was sent" in capsys.readouterr().err
    server.start()
    assert _sync(journal, server.url) == 0
    out = capsys.readouterr().out
    assert "7 record(s) sent" in out and "1 refused" in out and not journal.exists()
    (refused,) = [json.loads(line) for line in (tmp_path / "unsent" / f"{run_id}.rejected.jsonl").open()]
    assert refused["params"] == [["seed", "1"]] and "seed" in refused["error"]
    assert _sync(replay, server.url) == 0  # the same records again: nothing is duplicated
    check = MlflowClient(server.url)
    run = check.get_run(run_id)
    assert history(check, run_id, "loss") == [(s, float(s)) for s in range(5)]
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "0"}
    assert [a.path for a in check.list_artifacts(run_id)] == ["notes.txt"]
    assert _sync(tmp_path, server.url) == 1 and "no meta.json" in capsys.readouterr().err


def _sync(path: Path, url: str) -> int:
    return sync_main([str(path), "--tracking-uri", url])


def test_a_journal_torn_by_a_crash_keeps_every_whole_record_and_is_held_by_one_process(tmp_path):
    journal = RunJournal(tmp_path, "run1", "http://alice:pw@127.0.0.1:5000")
    journal.append("batch", tags=[["a", "1"]])
    journal.append("batch", tags=[["b", "2"]])
    with pytest.raises(JournalInUse):
        RunJournal.open(tmp_path / "run1")  # the writing process holds it
    with open(tmp_path / "run1" / "records.jsonl", "a") as out:
        out.write('{"seq": 3, "op": "ba')  # the process died mid-write
    journal.release()
    again = RunJournal(tmp_path, "run1")  # the next process (a resumed run)
    assert [r["seq"] for r in again.pending()] == [1, 2] and again.count_pending() == 2
    again.append("batch", tags=[["c", "3"]])
    assert [r["tags"] for r in again.pending()] == [[["a", "1"]], [["b", "2"]], [["c", "3"]]]
    again.mark_sent(2)
    assert again.count_pending() == 1 and [r["seq"] for r in again.pending()] == [3]
    assert "pw" not in (tmp_path / "run1" / "meta.json").read_text()
    again.mark_sent(3)
    assert not (tmp_path / "run1").exists()


def start_fit(tmp_path: Path, url: str, epochs: int, *extra: str) -> subprocess.Popen:
    """The quickstart with ``test_resnet`` on the real PneumoniaMNIST (subsampled), logging every step."""
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip("the real PneumoniaMNIST is in ../shared")
    args = [
        sys.executable,
        "-m",
        "medrobust.experiments",
        "fit",
        "--config",
        str(QUICKSTART),
        f"--data.root={SHARED_MEDMNIST}",
        "--data.subsample={train: 256, val: 64, test: 64}",
        "--model.model_name=test_resnet",
        f"--trainer.max_epochs={epochs}",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.tracking_uri={url}",
        "--trainer.logger.init_args.experiment_name=outage",
        *extra,
    ]
    return subprocess.Popen(
        args, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_steps(url: str, steps: int, fit: subprocess.Popen, timeout: float = 300) -> str:
    """The run's id once it has logged ``steps`` training steps (the fit is then in the middle of training)."""
    client, deadline = MlflowClient(url), time.time() + timeout
    while time.time() < deadline:
        assert fit.poll() is None, fit.stdout.read()[-3000:]
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss_step")) >= steps:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError("the fit logged no training steps")


def check_complete(url: str, run_id: str, epochs: int, folder: Path):
    """Every step once, every epoch once, params, the logged model (one), the test metrics, FINISHED."""
    client = MlflowClient(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_step")]
    assert sorted(steps) == list(range(len(steps))) and len(steps) == epochs * 2  # 256 images, batches of 128
    val = [m.step for m in client.get_metric_history(run_id, "val/auroc")]
    assert len(val) == len(set(val)) == epochs
    assert run.data.params["model.model_name"] == "test_resnet"
    (model,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert str(model.status) == "READY" and run.data.tags["model.id"] == model.model_id
    best, _ = fetch_checkpoint(run_id, url, folder)  # the weights once, in the model: its checkpoint rebuilds
    assert torch.load(best, weights_only=True)["hyper_parameters"]["model_name"] == "test_resnet"
    return run


@pytest.mark.slow  # about 2 min: a 30-second outage in a real fit
def test_a_fit_goes_on_through_a_30_second_outage_and_the_run_is_complete(tmp_path, server):
    epochs = 40
    fit = start_fit(tmp_path, server.url, epochs)
    run_id = wait_for_steps(server.url, 4, fit)
    server.stop()
    stopped = time.time() * 1000
    time.sleep(30)
    server.start()
    back = time.time() * 1000
    output, _ = fit.communicate(timeout=600)
    assert fit.returncode == 0, output[-3000:]
    # the sender saw the outage between two sends (our messages), or a send was in flight when the server went and
    # rode it out inside MLflow's own retries (urllib3's warnings; CI hit this once): nothing may be lost either way
    seen = ("is unreachable" in output and "is back" in output) or "Retrying (Retry(" in output
    assert seen, output[-3000:]
    run = check_complete(server.url, run_id, epochs, tmp_path / "fetched")
    during = [
        m
        for m in MlflowClient(server.url).get_metric_history(run_id, "train/loss_step")
        if stopped < m.timestamp < back
    ]
    assert len(during) >= 4, "the fit did not train while the server was away"
    assert any(k.startswith("test/") for k in run.data.metrics)  # the test after fit ran
    assert not (tmp_path / "runs" / "unsent" / run_id).exists()


@pytest.mark.slow  # about 2 min
def test_a_fit_whose_server_never_returns_finishes_and_sync_sends_it_once(tmp_path, server):
    epochs = 6
    fit = start_fit(tmp_path, server.url, epochs, "--trainer.logger.init_args.flush_timeout=5")
    run_id = wait_for_steps(server.url, 2, fit)
    server.stop()
    output, _ = fit.communicate(timeout=600)
    assert fit.returncode == 0, output[-3000:]
    journal = tmp_path / "runs" / "unsent" / run_id
    assert re.search(rf"record\(s\) of MLflow run {run_id} were not sent", output), output[-3000:]
    assert f"medrobust sync {journal}" in output and "test after fit is skipped" in output
    replay = shutil.copytree(journal, tmp_path / "copy" / run_id)
    server.start()
    for path in (journal, replay):  # the second time: the same records again
        sync = subprocess.run(
            [sys.executable, "-m", "medrobust.experiments", "sync", str(path), "--tracking-uri", server.url],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
        )
        assert sync.returncode == 0, sync.stderr[-3000:]
    assert not journal.exists()
    check_complete(server.url, run_id, epochs, tmp_path / "fetched")
