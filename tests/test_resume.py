"""Resuming runs (issue 9.8, 9.9, 9.16): which checkpoint `last` means, the run's status and config while it
trains again, and SLURM's requeue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from test_cli import QUICKSTART, TINY, medrobust, medrobust_in_process, runs


def fit(tmp_path: Path, data: list[str], *args: str, in_process: bool = False, **env: str):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = medrobust_in_process if in_process else medrobust
    return run("fit", "--config", QUICKSTART, *TINY, *data, *args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri, **env)


def client_for(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


KILL = "--trainer.callbacks+=kill_after_epochs.KillAfterEpochs"


def by_experiment(tmp_path: Path) -> dict[str, list]:
    client = client_for(tmp_path)
    return {e.name: client.search_runs([e.experiment_id]) for e in client.search_experiments()}


# five runs, about 45 s: marked slow; its sibling in the default run is
# test_find_resume_point_takes_the_named_experiments_run_and_refuses_ambiguity below
@pytest.mark.slow
def test_last_resumes_the_run_this_config_names_and_refuses_ambiguity(tmp_path, pneumonia_data_args) -> None:
    """`--ckpt_path last` used to take the newest last.ckpt under runs/, whatever its experiment: here experiment b's,
    written after a's. It now resumes a's own run; with two unfinished runs of a and no run name, it refuses."""
    data = [*pneumonia_data_args, "--trainer.max_epochs=2"]
    for name in ("a", "b"):
        killed = fit(tmp_path, data, KILL, f"--trainer.logger.init_args.experiment_name={name}")
        assert killed.returncode == -9, killed.stderr[-2000:]
    (run_a,) = by_experiment(tmp_path)["a"]
    resumed = fit(tmp_path, data, "--ckpt_path=last", "--trainer.logger.init_args.experiment_name=a")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs_now = by_experiment(tmp_path)
    assert [r.info.run_id for r in runs_now["a"]] == [run_a.info.run_id] and runs_now["a"][0].info.status == "FINISHED"
    assert [r.info.status for r in runs_now["b"]] == ["RUNNING"]  # untouched

    second = fit(tmp_path, data, KILL, "--trainer.logger.init_args.experiment_name=b")
    assert second.returncode == -9
    ambiguous = fit(tmp_path, data, "--ckpt_path=last", "--trainer.logger.init_args.experiment_name=b")
    assert ambiguous.returncode == 2 and "--ckpt_path last is ambiguous" in ambiguous.stderr
    assert len(by_experiment(tmp_path)["b"]) == 2  # nothing started


def test_a_resumed_run_is_running_and_a_changed_config_is_a_new_version(tmp_path, pneumonia_data_args) -> None:
    """The run a crash left FAILED is RUNNING again while it trains; resuming with another max_epochs keeps the first
    config (and params) and records the change as config version 2."""
    status = tmp_path / "status.txt"
    common = [
        *pneumonia_data_args,
        "--trainer.callbacks+=fail_once.FailOnce",
        f"--trainer.callbacks.marker={tmp_path / 'failed'}",
        "--trainer.callbacks+=record_run_status.RecordRunStatus",
        f"--trainer.callbacks.path={status}",
    ]
    first = fit(tmp_path, common, "--trainer.max_epochs=3")
    assert first.returncode == 1
    (run,) = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    resumed = fit(tmp_path, common, "--trainer.max_epochs=4", "--ckpt_path=last", in_process=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = client_for(tmp_path)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    lines = status.read_text().split("\n")[:-1]
    assert lines[0] == "0 RUNNING" and lines[1:] == ["1 RUNNING", "2 RUNNING", "3 RUNNING"], lines
    assert run.data.params["trainer.max_epochs"] == "3" and run.data.tags["config.version"] == "2"
    assert json.loads(run.data.tags["config.v2.changes"]) == {"trainer.max_epochs": ["3", "4"]}
    first_config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    second_config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config_v2.yaml", str(tmp_path))).read_text()
    )
    assert first_config["trainer"]["max_epochs"] == 3 and second_config["trainer"]["max_epochs"] == 4


SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "medrobust", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost"}


@pytest.mark.slow  # about 20 s; test_killed_before_its_first_checkpoint_continues_the_same_run resumes by default
def test_slurm_requeue_leaves_the_run_killed_and_no_run_takes_another_runs_hpc_checkpoint(
    tmp_path, pneumonia_data_args
) -> None:
    """Under SLURM, Lightning's requeue handler (SIGUSR1) saved hpc_ckpt_1.ckpt into the shared runs/ and marked the
    run FINISHED, so a sweep skipped it; and any later fit without --ckpt_path silently resumed that checkpoint.
    Now the requeued run is KILLED, another run starts afresh, and the requeued command resumes its own run."""
    data = [*pneumonia_data_args, "--trainer.max_epochs=2"]
    requeue = ["--trainer.callbacks+=signal_after_epochs.SignalAfterEpochs", "--trainer.callbacks.epochs=1"]
    first = fit(tmp_path, data, *requeue, "--trainer.logger.init_args.experiment_name=a", **SLURM)
    assert first.returncode == -9, first.stderr[-3000:]
    assert list((tmp_path / "runs").glob("hpc_ckpt_*.ckpt")), first.stderr[-3000:]
    (run_a,) = by_experiment(tmp_path)["a"]
    assert run_a.info.status == "KILLED" and run_a.data.tags["medrobust.requeued"] == "true"

    other = fit(tmp_path, data, "--trainer.logger.init_args.experiment_name=b", in_process=True, **SLURM)
    assert other.returncode == 0, other.stderr[-3000:]
    (run_b,) = by_experiment(tmp_path)["b"]
    history = client_for(tmp_path).get_metric_history(run_b.info.run_id, "val/auroc")
    assert len(history) == 2  # trained from scratch, both epochs

    again = fit(tmp_path, data, "--trainer.logger.init_args.experiment_name=a", **SLURM)  # the requeued job
    assert again.returncode == 0, again.stderr[-3000:]
    (run_a,) = by_experiment(tmp_path)["a"]
    assert run_a.info.status == "FINISHED"
    assert len(client_for(tmp_path).get_metric_history(run_a.info.run_id, "val/auroc")) == 2  # epoch 0, then 1


def test_find_resume_point_takes_the_named_experiments_run_and_refuses_ambiguity(tmp_path) -> None:
    """The default-run sibling of the test above, on a real MLflow store and real checkpoint files (no training):
    experiment b's last.ckpt is newer than a's, and `last` for a still means a's own run; two unfinished runs of b
    are ambiguous; a finished run is named in an error, not resumed."""
    import time

    import torch

    from medrobust.experiments.resume import find_resume_point
    from medrobust.utilities.errors import InputError

    client = client_for(tmp_path)
    made = {}
    for name in ("a", "b", "b"):
        experiment = client.get_experiment_by_name(name)
        exp_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(exp_id)
        folder = tmp_path / "runs" / exp_id / run.info.run_id / "checkpoints"
        folder.mkdir(parents=True)
        torch.save({"mlflow": {"run_id": run.info.run_id}}, folder / "last.ckpt")
        made.setdefault(name, []).append((run, folder / "last.ckpt"))
        time.sleep(0.01)
    ((run_a, last_a),) = made["a"]
    point = find_resume_point(client, "a", None, None, tmp_path / "runs")
    assert point.path == last_a and point.run_id == run_a.info.run_id
    with pytest.raises(InputError, match="ambiguous: experiment 'b' has several unfinished runs"):
        find_resume_point(client, "b", None, None, tmp_path / "runs")
    named = made["b"][1][0]
    assert find_resume_point(client, "b", named.info.run_name, None, tmp_path / "runs").run_id == named.info.run_id
    client.set_terminated(run_a.info.run_id)
    with pytest.raises(InputError, match="every run of 'a' this config names is FINISHED"):
        find_resume_point(client, "a", None, None, tmp_path / "runs")
    assert find_resume_point(client, "a", None, None, tmp_path / "runs", explicit=False) is None
    # Review of issue 24: a run another live process on this host still writes is not taken over (its other DDP
    # processes excepted); a run killed without a checkpoint is among the ambiguous; a FAILED one is not continued
    import subprocess
    import sys

    from medrobust.utilities.processes import host

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # a medrobust process"])
    try:
        for key, value in {
            "medrobust.host": host(),
            "medrobust.pid": str(owner.pid),
            "medrobust.command": "fit",
        }.items():
            client.set_tag(named.info.run_id, key, value)
        with pytest.raises(InputError, match=f"(?s)still being written by a live process.*process {owner.pid}"):
            find_resume_point(client, "b", named.info.run_name, None, tmp_path / "runs")
        assert find_resume_point(client, "b", named.info.run_name, None, tmp_path / "runs", first_process=False)
    finally:
        owner.kill()
        owner.wait()
    bare = client.create_run(client.get_experiment_by_name("a").experiment_id)
    for key, value in {"medrobust.host": host(), "medrobust.pid": str(owner.pid), "medrobust.command": "fit"}.items():
        client.set_tag(bare.info.run_id, key, value)
    assert find_resume_point(client, "a", None, None, tmp_path / "runs").path is None  # killed before a checkpoint
    client.set_terminated(bare.info.run_id, "FAILED")
    with pytest.raises(InputError, match="FINISHED"):  # a FAILED run without a checkpoint: start afresh
        find_resume_point(client, "a", None, None, tmp_path / "runs")


def test_killed_before_its_first_checkpoint_continues_the_same_run(tmp_path, pneumonia_data_args) -> None:
    """Issue 24.8: SIGKILL in the first epoch (no checkpoint yet): `--ckpt_path last` used to warn, start a second
    run and leave the first RUNNING forever. It now trains that run again from epoch 0."""
    data = [*pneumonia_data_args, "--trainer.max_epochs=2"]
    killed = fit(tmp_path, data, KILL, "--trainer.callbacks.epochs=0")
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run,) = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "RUNNING" and not list((tmp_path / "runs").rglob("*.ckpt"))
    resumed = fit(tmp_path, data, "--ckpt_path=last", in_process=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (again,) = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert len(client_for(tmp_path).get_metric_history(run.info.run_id, "val/auroc")) == 2  # epochs 0 and 1


def test_a_truncated_last_checkpoint_is_not_resumed_from(tmp_path, pneumonia_data_args) -> None:
    """Issue 24.8: a last.ckpt cut short mid-write (by a writer that is not atomic: ours renames a whole file into
    place) used to end the resume in a raw PytorchStreamReader traceback and a FAILED run; it is skipped with a
    warning, and the run goes on in the same MLflow run."""
    data = [*pneumonia_data_args, "--trainer.max_epochs=2"]
    killed = fit(tmp_path, data, KILL, "--trainer.callbacks.epochs=1")
    assert killed.returncode == -9, killed.stderr[-2000:]
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    target = last.resolve()
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    resumed = fit(tmp_path, data, "--ckpt_path=last", in_process=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "is truncated" in resumed.stderr
    (run,) = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"


def test_a_checkpoint_write_killed_midway_leaves_the_old_file_whole(tmp_path) -> None:
    """Issue 24.8: SIGKILL a process while it writes a 400 MB checkpoint over a good one: the good one stays whole
    (the write goes to a temporary file renamed into place); the next write removes the leftover."""
    import signal
    import subprocess
    import sys
    import time

    import torch
    from conftest import subprocess_env

    from medrobust.callbacks.helpers.atomic_checkpoint_io import save_atomic
    from medrobust.experiments.resume import is_complete

    path = tmp_path / "last.ckpt"
    save_atomic({"step": torch.tensor(1)}, path)
    code = (
        "import torch, sys; from medrobust.callbacks.helpers.atomic_checkpoint_io import save_atomic; "
        "save_atomic({'w': torch.ones(100_000_000)}, sys.argv[1])"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)], env=subprocess_env())
    deadline = time.time() + 120

    def writing() -> bool:  # the temporary file exists and has a megabyte in it
        return any(p.stat().st_size > 1e6 for p in tmp_path.glob(".last.ckpt.tmp-*"))

    while not writing():
        assert writer.poll() is None and time.time() < deadline, "the writer finished before it could be killed"
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert is_complete(path) and torch.load(path, weights_only=True)["step"] == 1
    assert list(tmp_path.glob(".last.ckpt.tmp-*"))  # the killed writer's leftover
    save_atomic({"step": torch.tensor(2)}, path)
    assert not list(tmp_path.glob(".last.ckpt.tmp-*")) and torch.load(path, weights_only=True)["step"] == 2
