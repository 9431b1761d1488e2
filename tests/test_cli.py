"""The medrobust command end to end: a tracked run, resume after a kill, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env, write_medmnist_npz
from mlflow import MlflowClient

from medrobust.experiments.cli import MedRobustCLI

TINY = [
    "--model.model_name=test_resnet",
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger.init_args.experiment_name=tests",
    "--system_metrics.interval=0.2",
    "--mlflow_model.log_model=false",  # a few seconds per run; tests/test_mlflow_model.py logs models
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
    robust = ["--trainer.callbacks+=medrobust.callbacks.RobustValidation", "--trainer.callbacks.steps=2"]
    MedRobustCLI(args=["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, *robust])
    (run,) = runs(tracking_uri)
    client = MlflowClient(tracking_uri)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.model_name"] == "test_resnet" and params["data.flag"] == "pneumoniamnist"
    # Issue 9.22: callback settings are params of their own, searchable in the UI.
    assert params["callbacks.RobustValidation.steps"] == "2" and "trainer.callbacks" not in params
    # Issue 9.25: the experiment opens on the runs table in MLflow's UI.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # Issue 9.1: the selection rule and the epoch it chose are on the run.
    assert run.data.tags["selection.rule"] == "clean_auroc" and run.data.tags["selection.epoch"] in ("0", "1")
    assert "summary/clean_bal_acc" in run.data.metrics
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


def test_runs_are_announced_and_seeded_runs_get_distinct_names(tracking_uri, pneumonia_data_args, capsys) -> None:
    """Issue 24.1: fit and test print the experiment, run name, run id and UI link when the run starts and when it
    ends; two unnamed runs of one seeded config get different names (MLflow's generator draws from `random`)."""
    args = ["--config", QUICKSTART, *TINY, *pneumonia_data_args, "--seed_everything=0", "--trainer.max_epochs=1"]
    for _ in range(2):
        MedRobustCLI(args=["fit", *args, "--test_after_fit=false"])
    first, second = sorted(runs(tracking_uri), key=lambda r: r.info.start_time)
    assert first.info.run_name != second.info.run_name
    out = capsys.readouterr().out
    db = (Path.cwd() / "mlflow.db").resolve()
    for run in (first, second):
        name, run_id, exp = run.info.run_name, run.info.run_id, run.info.experiment_id
        link = f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}  (after: mlflow ui --backend-store-uri sqlite:///{db})"
        for event in ("started", "finished"):
            assert f"medrobust: {event} run {name!r} (id {run_id}) in experiment 'tests'\n  {link}" in out, out
    MedRobustCLI(args=["test", *args, f"--ckpt_path={first.data.tags['best_checkpoint']}"])
    (tested,) = [r for r in runs(tracking_uri) if r.info.run_id not in (first.info.run_id, second.info.run_id)]
    out = capsys.readouterr().out
    assert out.count(f"(id {tested.info.run_id})") == 2
    assert tested.info.run_name not in (first.info.run_name, second.info.run_name)


def test_test_subcommand_on_a_checkpoint(tracking_uri, pneumonia_data_args) -> None:
    MedRobustCLI(args=["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, "--trainer.max_epochs=1"])
    (fit_run,) = runs(tracking_uri)
    best = fit_run.data.tags["best_checkpoint"]
    MedRobustCLI(args=["test", "--config", QUICKSTART, *TINY, *pneumonia_data_args, f"--ckpt_path={best}"])
    test_run = next(r for r in runs(tracking_uri) if r.info.run_id != fit_run.info.run_id)
    assert test_run.data.metrics["test/auroc"] == pytest.approx(fit_run.data.metrics["test/auroc"])


def medrobust(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medrobust.experiments", *args],
        cwd=cwd,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def medrobust_in_process(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``medrobust ARGS`` through the real entry point (:func:`~medrobust.experiments.cli.main`), in this process:
    for commands refused on bad input, where a subprocess would spend most of its time importing torch and
    Lightning. Exit status, stdout and stderr as a subprocess reports them: an uncaught exception is status 1 with its
    traceback on stderr, and log records and warnings go to stderr too. Environment, working directory,
    ``sys.argv``, ``sys.path``, MLflow's tracking URI, the RNGs and modules imported from ``cwd`` are restored."""
    import contextlib
    import io
    import logging
    import os
    import random
    import traceback
    import warnings

    import numpy as np
    from mlflow.tracking._tracking_service import utils as mlflow_uri

    from medrobust.experiments.cli import main

    saved_env, saved_path, saved_cwd, saved_argv = dict(os.environ), list(sys.path), os.getcwd(), sys.argv
    saved_modules, saved_uri = set(sys.modules), mlflow_uri._tracking_uri
    saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["medrobust", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
                warnings.formatwarning(message, category, filename, lineno, line)
            )
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if not isinstance(exit_.code, int | None):
                    err.write(f"{exit_.code}\n")
            except Exception:  # reported as a subprocess would: status 1 and the traceback
                code = 1
                traceback.print_exc()
    finally:
        logging.getLogger().removeHandler(handler)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        sys.argv = saved_argv
        mlflow_uri._tracking_uri = saved_uri
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])
        torch.set_rng_state(saved_rng[2])
        for name in set(sys.modules) - saved_modules:  # a user's callback module from cwd, imported by name
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(Path(cwd).resolve())):
                del sys.modules[name]
    return subprocess.CompletedProcess(["medrobust", *args], code, out.getvalue(), err.getvalue())


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

    resumed = medrobust_in_process(*base, "--ckpt_path=last", cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (run,) = runs(uri)  # still exactly one run
    assert run.info.status == "FINISHED"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "val/auroc")
    assert len(history) == 3  # epoch 0 from the killed process, epochs 1-2 after resume
    assert "test/auroc" in run.data.metrics


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.root={root}"], "MD5 mismatch"),
        (["--data.path={good}", "--data.subsample={{train: 1000}}"], "outside 1..48 samples"),
    ],
)
def test_bad_data_leaves_no_run_behind(tmp_path, args, message) -> None:
    """Issue 9.26: data is loaded and checked before the MLflow run is created: a typo clutters no experiment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "root"
    write_medmnist_npz(root / "pneumoniamnist.npz", "pneumoniamnist")  # right name, wrong bytes
    good = write_medmnist_npz(tmp_path / "good.npz", "pneumoniamnist")
    args = [a.format(root=root, good=good) for a in args]
    result = medrobust_in_process("fit", "--config", QUICKSTART, *TINY, *args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert runs(uri) == []


def test_an_error_inside_training_keeps_its_traceback_and_fails_the_run(tmp_path, pneumonia_data_args) -> None:
    """Issue 9.12: only our own input errors get the one-line message (exit 2); a ValueError raised mid-training is
    a failure: exit 1, with its traceback, and the run is FAILED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fail = ["--trainer.callbacks+=fail_once.FailOnce", f"--trainer.callbacks.marker={tmp_path / 'failed'}"]
    fail += ["--trainer.callbacks.error=ValueError"]
    # through the entry point in this process: an uncaught error is status 1 with its traceback, as from a subprocess
    result = medrobust_in_process(
        "fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, *fail, cwd=tmp_path, MLFLOW_TRACKING_URI=uri
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" in result.stderr and "ValueError: FailOnce: injected failure" in result.stderr
    assert "medrobust: error" not in result.stderr
    assert [r.info.status for r in runs(uri)] == ["FAILED"]
    (run,) = runs(uri)
    assert f"medrobust: FAILED run {run.info.run_name!r} (id {run.info.run_id})" in result.stdout  # issue 24.1


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, pneumonia_data_args) -> None:
    """Issue 9.10: checkpoints are loaded with weights_only=True, for resume (fit) and for evaluation (test)."""
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "mlflow": {"run_id": "x"}, "evil": Payload()}, tmp_path / "evil.ckpt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for command in ("fit", "test"):
        result = medrobust_in_process(
            command,
            "--config",
            QUICKSTART,
            *TINY,
            *pneumonia_data_args,
            f"--ckpt_path={tmp_path / 'evil.ckpt'}",
            cwd=tmp_path,
            MLFLOW_TRACKING_URI=uri,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Refused to load" in result.stderr and "weights_only" in result.stderr
        assert not marker.exists()


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
    result = medrobust_in_process("fit", "--config", QUICKSTART, *TINY, *args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.format(tmp=tmp_path) in result.stderr
    assert not (tmp_path / "mlflow.db").exists() or runs(uri) == []  # checked before any run was created


@pytest.mark.parametrize(
    ("uri", "stored"),
    [
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),  # unchanged, not even re-assembled
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://alice:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("http://token@host/x", "http://***@host/x"),
        ("mysql://host/db?password=pw&charset=utf8", "mysql://host/db?password=***&charset=utf8"),
    ],
)
def test_tracking_uris_are_stored_without_credentials(uri: str, stored: str) -> None:
    """Issue 9.11: what configs, params, checkpoints and messages get instead of the URI itself."""
    from medrobust.utilities.tracking_uri import redact_uri

    assert redact_uri(uri) == stored


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--trainer.callbacks.eps=8/2555", r"'8/2555' parses to 0.00313112 = 0.7984/255, not a whole number"),
        ("--trainer.callbacks.eps=80/255", r"'80/255' parses to 0.313725 = 80/255, above 64/255"),
    ],
)
def test_a_budget_typo_is_refused_before_any_run(tmp_path, pneumonia_data_args, option, message) -> None:
    """Issue 24.2: `eps: 8/2555` used to train at 0.8/255, recording only the string."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    adv = ["--trainer.callbacks+=medrobust.callbacks.AdversarialTraining", option]
    result = medrobust_in_process(
        "fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, *adv, cwd=tmp_path, MLFLOW_TRACKING_URI=uri
    )
    assert result.returncode == 2 and "allow_unusual_budget" in result.stderr, result.stderr[-2000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() or runs(uri) == []


def test_budget_checks_and_their_escape() -> None:
    from medrobust.callbacks import AdversarialTraining, RobustnessEvaluation
    from medrobust.lightning_modules.attacks.threat import Threat, check_budget
    from medrobust.utilities.errors import InputError

    assert AdversarialTraining(eps="8/2555", allow_unusual_budget=True).eps == pytest.approx(8 / 2555)
    AdversarialTraining(eps=0)  # standard training: no budget to check
    with pytest.raises(InputError, match=r"L-inf budget 0.03 parses to 0.03 = 7.65/255.*e.g. '8/255'"):
        RobustnessEvaluation(linf_eps=[0.03])
    with pytest.raises(InputError, match="L2 budget 40 parses to 40, longer than the diagonal of a 1x28x28 image"):
        check_budget(Threat("l2", 40), 40, (1, 28, 28))
    check_budget(Threat("l2", 27.9), 27.9, (1, 28, 28))


def test_first_hour_mistakes_are_refused_in_one_line_before_any_run(tmp_path, pneumonia_data_args) -> None:
    """Issue 24.3, as a new user makes them: a teacher that is not a ClassifierModule checkpoint, a teacher run name
    typo, a plain state_dict as --ckpt_path. Each: exit 2, one message, no run (they used to leave FAILED runs or a
    35-line KeyError traceback)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, 3), "fc.bias": torch.zeros(2)}, tmp_path / "plain.pt")
    base = ["--config", QUICKSTART, *TINY, *pneumonia_data_args]
    distill = ["--trainer.callbacks+=medrobust.callbacks.FeatureDistillation", "--trainer.callbacks.logit_weight=1"]
    cases = [
        (
            ["fit", *base, *distill, f"--trainer.callbacks.teacher={tmp_path / 'plain.pt'}"],
            "is not a ClassifierModule checkpoint",
        ),
        (["fit", *base, *distill, "--trainer.callbacks.teacher=mlflow:tests/no_such_run"], "no_such_run"),
        (
            ["test", *base, f"--ckpt_path={tmp_path / 'plain.pt'}"],
            "is not a Lightning checkpoint of a medrobust run: it is a plain state_dict of 2 tensors (conv1.weight, "
            "fc.bias)",
        ),
    ]
    for args, message in cases:
        result = medrobust_in_process(*args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "mlflow.db").exists() or runs(uri) == [], args


def test_a_checkpoint_that_replaces_the_configs_model_says_so(
    tracking_uri, pneumonia_data_args, synthetic_npz, capfd
) -> None:
    """Issue 24.3: `--model.model_name resnet34` with a test_resnet checkpoint was silently overridden. And (review)
    a checkpoint for other data (2 grey classes against 8 RGB ones) is refused before a run exists, not with a
    state_dict shape error inside the test."""
    from medrobust.utilities.errors import InputError

    args = ["--config", QUICKSTART, *TINY, *pneumonia_data_args, "--trainer.max_epochs=1"]
    MedRobustCLI(args=["fit", *args, "--test_after_fit=false"])
    (run,) = runs(tracking_uri)
    capfd.readouterr()
    best = run.data.tags["best_checkpoint"]
    MedRobustCLI(args=["test", *args, "--model.model_name=resnet34", f"--ckpt_path={best}"])
    err = capfd.readouterr().err
    assert "its own settings are used: model_name 'resnet34' -> 'test_resnet'" in err, err[-2000:]
    blood = ["--data.flag=bloodmnist", f"--data.path={synthetic_npz('bloodmnist')}"]
    with pytest.raises(InputError, match=r"trained with num_classes 2 \(the data: 8\), in_chans 1 \(the data: 3\)"):
        MedRobustCLI(args=["test", "--config", QUICKSTART, *TINY, *blood, f"--ckpt_path={best}"])
    assert len(runs(tracking_uri)) == 2  # the fit and the first test: the refused one made none


@pytest.mark.parametrize(("rule", "top_k"), [("last", 1), ("clean_auroc", 1), ("clean_auroc", 2)])
def test_last_ckpt_is_the_last_epoch_no_second_copy_and_alone_keeps_optimizer_state(
    tracking_uri, pneumonia_data_args, rule, top_k
) -> None:
    """Issue 24.5: `last.ckpt` holds the last epoch whatever the rule chose (Lightning 2.6 left it at the selected
    epoch, so a resume trained the later epochs again); it links to the selected checkpoint when both are that epoch
    (rule `last`: always); a selected checkpoint that is not the last keeps no optimizer state (two kept: the first
    is stripped); every file loads."""
    args = [f"--checkpoint.rule={rule}", f"--checkpoint.save_top_k={top_k}"]
    MedRobustCLI(args=["fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, *args])
    (run,) = runs(tracking_uri)
    folder = Path(run.data.tags["best_checkpoint"]).parent
    last = folder / "last.ckpt"
    others = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(others) == top_k and not list(folder.glob(".*tmp*"))  # no temporary file left by the atomic writer
    target = last.resolve()
    state = torch.load(target, weights_only=True)
    assert state["epoch"] == 1 and "optimizer_states" in state  # max_epochs 2: epochs 0 and 1
    if rule == "last":
        assert last.is_symlink() and target == Path(run.data.tags["best_checkpoint"]).resolve()
    stripped = [p for p in others if p.resolve() != target]
    for path in stripped:
        assert "optimizer_states" not in torch.load(path, weights_only=True), path.name
    assert stripped or top_k == 1
    if stripped:  # fit cannot continue from a checkpoint without optimizer state: said in one line
        refused = medrobust_in_process(
            "fit", "--config", QUICKSTART, *TINY, *pneumonia_data_args, f"--ckpt_path={stripped[0]}", cwd=Path.cwd()
        )
        assert refused.returncode == 2 and "holds no optimizer state" in refused.stderr, refused.stderr[-2000:]


def test_a_bad_option_is_said_in_two_lines_with_its_choices(tmp_path) -> None:
    """Transcript of issue 24: an unknown selection rule printed the usage of every option (60 lines) before the
    error."""
    result = medrobust_in_process("fit", "--config", QUICKSTART, "--checkpoint.rule", "best_auc", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) <= 3, result.stderr
    assert "expected one of 'clean_auroc', 'clean_bal_acc', 'robust_acc', 'robust_bal_acc', 'last'" in result.stderr
    assert "Got value: best_auc" in result.stderr and "medrobust fit --help" in result.stderr
