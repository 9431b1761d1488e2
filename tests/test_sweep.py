"""``medrobust sweep`` and ``medrobust report``: the sweep file, parent/child runs, a DDP child, a real MLflow
server over HTTP, and a sweep killed outright and relaunched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, SHARED_MEDMNIST, subprocess_env, write_medmnist_npz
from mlflow import MlflowClient
from test_cli import medrobust, medrobust_in_process

from medrobust.experiments.reporting.tradeoff import RunRow, build_report, format_table, group_rows, pareto_front
from medrobust.experiments.reporting.tradeoff_figures import tradeoff_figure
from medrobust.experiments.sweeping.sweep_spec import SweepError, SweepSpec, set_override
from medrobust.experiments.tracking.mlflow_server import LocalMlflowServer
from medrobust.lightning_modules.metrics.summary import summary_metrics

QUICKSTART = REPO / "experiments" / "configs" / "quickstart.yaml"
SWEEP_BASE = REPO / "experiments" / "configs" / "sweeps" / "pneumonia_tradeoff_cpu.yaml"


# ---------------------------------------------------------------------------------------------- the file
def write_sweep(path: Path, **spec: object) -> Path:
    spec.setdefault("name", "s")
    spec.setdefault("base", [str(QUICKSTART)])
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_points_labels_and_keys(tmp_path) -> None:
    spec = SweepSpec.load(
        write_sweep(
            tmp_path / "s.yaml",
            grid={"callbacks.AdversarialTraining.eps": [0, "8/255"], "seed_everything": [0, 1]},
            points=[{"model.model_name": "resnet34"}],
            base=[str(SWEEP_BASE)],
        )
    )
    assert spec.metric == "bal_acc"  # issue 25.8: balanced accuracy unless the file says otherwise
    points = spec.expand()
    assert [p.label for p in points] == [
        "eps=0,seed=0",
        "eps=0,seed=1",
        "eps=8/255,seed=0",
        "eps=8/255,seed=1",
        "model_name=resnet34",
    ]
    assert len({p.key for p in points}) == 5
    reordered = SweepSpec.load(
        write_sweep(
            tmp_path / "r.yaml",
            grid={"seed_everything": [0, 1], "callbacks.AdversarialTraining.eps": [0, "8/255"]},
            base=[str(SWEEP_BASE)],
        )
    )
    assert {p.key for p in reordered.expand()} == {p.key for p in points[:4]}  # identity survives reordering
    config = spec.compose(points[2])
    adv = next(cb for cb in config["trainer"]["callbacks"] if cb["class_path"].endswith("AdversarialTraining"))
    assert adv["init_args"]["eps"] == "8/255" and config["seed_everything"] == 0
    assert spec.compose(points[4])["model"]["model_name"] == "resnet34"


def test_callback_overrides() -> None:
    config = yaml.safe_load(SWEEP_BASE.read_text())
    set_override(config, "callbacks.RobustnessEvaluation", {"pgd_steps": 3})
    set_override(config, "callbacks.AdversarialTraining", None)
    set_override(config, "trainer.max_epochs", 1)
    names = [cb["class_path"].rsplit(".", 1)[1] for cb in config["trainer"]["callbacks"]]
    assert names == ["RobustValidation", "RobustnessEvaluation", "ShiftEvaluation"]
    robust = config["trainer"]["callbacks"][1]["init_args"]
    assert robust["pgd_steps"] == 3 and robust["attacks"] == ["fgsm", "pgd"]  # merged, not replaced
    with pytest.raises(SweepError, match=r"no AdversarialTraining in trainer.callbacks"):
        set_override(config, "callbacks.AdversarialTraining.eps", 0.1)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"gird": {}}, r"unknown keys \['gird'\]"),
        ({"base": ["missing.yaml"]}, r"base config .*missing.yaml does not exist"),
        ({"grid": {"seed_everything": []}}, r"grid axis 'seed_everything' must be a non-empty list"),
        ({"grid": {"seed_everything": [1, 1]}}, r"the same point twice"),
        # issue 25.7: one checkpoint-selection rule for every arm
        (
            {"points": [{"seed_everything": 0}, {"seed_everything": 1, "checkpoint.rule": "last"}]},
            r"different rules \(clean_auroc: seed=0; last: .*seed=1\)",
        ),
        ({"grid": {"checkpoint.rule": ["last", "robust_bal_acc"]}}, r"different rules .*mixed_selection: true"),
    ],
)
def test_bad_sweep_files(tmp_path, spec, match) -> None:
    with pytest.raises(SweepError, match=match):
        SweepSpec.load(write_sweep(tmp_path / "bad.yaml", **spec)).expand()


def test_a_study_of_selection_rules_says_so(tmp_path) -> None:
    spec = {"grid": {"checkpoint.rule": ["last", "clean_auroc"]}, "mixed_selection": True}
    assert len(SweepSpec.load(write_sweep(tmp_path / "rules.yaml", **spec)).expand()) == 2


def test_bad_sweep_file_exits_2_with_one_message(tmp_path) -> None:
    path = write_sweep(tmp_path / "bad.yaml", grid={"callbacks.Nope.eps": [1]})
    proc = medrobust("sweep", str(path), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no Nope in trainer.callbacks" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------- aggregation
def test_summary_is_the_per_sample_worst_case() -> None:
    """Issue 9.5: summary/adv_* is RobustnessEvaluation's per-sample worst case, with its n; the minimum of
    whole-attack accuracies measured on different samples is not used."""
    metrics = {
        "test/acc": 0.9,
        "test/bal_acc": 0.85,
        "test/auroc": 0.95,
        "test/top_pred_share": 0.6,
        "test/adv/fgsm/linf_8_255/acc": 0.5,
        "test/adv/pgd10/linf_8_255/acc": 0.4,
        "test/adv/autoattack/linf_8_255/acc": 0.45,
        "test/adv/worst/linf_8_255/acc": 0.35,
        "test/adv/worst/linf_8_255/bal_acc": 0.3,
        "test/adv/worst/linf_8_255/n": 64,
        "test/adv/pgd10/linf_2_255/bal_acc": 0.7,
        "test/shift/mean/bal_acc": 0.6,
        "test/shift/be": 1.1,
        "test/shift/gaussian_blur/mean/auroc": 0.8,
        "test/shift/pixelate/mean/auroc": 0.6,
        "val/acc": 0.99,
    }
    assert summary_metrics(metrics) == pytest.approx(
        {
            "summary/clean_acc": 0.9,
            "summary/clean_bal_acc": 0.85,
            "summary/clean_auroc": 0.95,
            "summary/clean_top_pred_share": 0.6,
            "summary/adv_acc/linf_8_255": 0.35,
            "summary/adv_bal_acc/linf_8_255": 0.3,
            "summary/adv_n/linf_8_255": 64,
            "summary/shift_bal_acc": 0.6,
            "summary/shift_be": 1.1,
            "summary/shift_auroc": 0.7,
        }
    )


def test_pareto_front_and_seed_groups() -> None:
    assert pareto_front([(0.9, 0.1), (0.8, 0.5), (0.7, 0.4), (0.6, 0.6), (0.9, 0.05)]) == [3, 1, 0]
    rows = [
        RunRow(
            f"r{i}",
            f"n{i}",
            "FINISHED",
            {"eps": eps, "seed_everything": seed},
            {"summary/clean_acc": acc, "summary/adv_acc/linf_8_255": adv},
        )
        for i, (eps, seed, acc, adv) in enumerate(
            [("0", 0, 0.90, 0.00), ("0", 1, 0.88, 0.02), ("8/255", 0, 0.80, 0.60), ("8/255", 1, 0.84, 0.64)]
        )
    ]
    report = build_report(rows, ["eps", "seed_everything"])
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["eps=8/255"]["n"] == 2
    assert groups["eps=8/255"]["adv_acc/linf_8_255/mean"] == pytest.approx(0.62)
    assert groups["eps=8/255"]["adv_acc/linf_8_255/std"] == pytest.approx(0.0283, abs=1e-4)
    assert report["pareto_front"]["linf_8_255"] == ["eps=8/255", "eps=0"]
    assert report["metric"] == "acc"  # no class ratio recorded: nothing says the labels are imbalanced
    # issue 25.20: mean [95% t interval] over seeds (2 seeds: t = 12.7, a wide interval, as it should be)
    assert "| eps=0 | 2 | 0.890 [0.763, 1.017] | 0.010 [-0.117, 0.137] |  |" in format_table(report)
    # issue 26.4: a registered run is marked on the trade-off figure with its name, version and alias
    figure = tradeoff_figure(group_rows(rows), ["linf_8_255"], "acc", {"r3": "pneumonia_robust v2 @champion"})
    (ax,) = [a for a in figure.axes if a.get_visible()]
    assert "registered model" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pneumonia_robust v2 @champion" in [t.get_text() for t in ax.texts]
    star = [c for c in ax.collections if c.get_label() == "registered model"]
    assert star and star[0].get_offsets().tolist() == [[0.84, 0.64]]  # at run r3's own point


def test_every_sweep_file_composes_into_valid_configs(tmp_path, tracking_uri) -> None:
    from medrobust.experiments.cli import MedRobustCLI

    files = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
    assert len(files) >= 4
    for file in files:
        spec = SweepSpec.load(file)
        points = spec.expand()
        for point in (points[0], points[-1]):
            config = spec.compose(point)
            flag = config["data"]["flag"]
            data = (
                {"root": str(SHARED_MEDMNIST)}
                if (SHARED_MEDMNIST / f"{flag}.npz").is_file()
                else {"path": str(write_medmnist_npz(tmp_path / f"{flag}.npz", flag, size=config["data"]["size"]))}
            )
            config["data"].pop("path", None)  # a sweep over a file its study writes first
            config["data"] |= data
            # GPU sweeps ask for accelerator gpu; this checks the config, not the hardware.
            config["trainer"] |= {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
            path = tmp_path / f"{file.stem}_{point.index}.yaml"
            path.write_text(yaml.safe_dump(config))
            cli = MedRobustCLI(args=["--config", str(path)], run=False)
            assert cli.model.num_classes == cli.datamodule.num_classes, file


# ------------------------------------------------------------------------------------------ end to end
TINY = {
    "model.model_name": "test_resnet",
    "trainer.max_epochs": 2,
    "trainer.enable_progress_bar": False,
    "trainer.log_every_n_steps": 1,
    "trainer.accelerator": "cpu",
    "system_metrics.enabled": False,
    "mlflow_model.log_model": False,
    "data.batch_size": 64,
    "data.eval_batch_size": 64,
    "data.shifts": ["corruption:gaussian_noise@1", "corruption:gaussian_noise@5"],
    "callbacks.AdversarialTraining.steps": 2,
    "callbacks.AdversarialTraining.warmup_epochs": 0,
    "callbacks.RobustnessEvaluation.linf_eps": ["2/255", "8/255"],
    "callbacks.RobustnessEvaluation.pgd_steps": 3,
    "callbacks.RobustnessEvaluation.sanity_checks": False,
}


# Standard training, one attack budget, no shift suite: the cheapest child that still tests what a sweep does.
STANDARD_NO_SHIFT = {
    "callbacks.AdversarialTraining.eps": 0,
    "callbacks.RobustnessEvaluation.linf_eps": ["8/255"],
    "data.shifts": [],
    "callbacks.ShiftEvaluation": None,
}


def data_overrides(tmp_path: Path) -> dict[str, object]:
    """Real PneumoniaMNIST (subsampled) when present, else a synthetic stand-in of the same format."""
    if (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        source: dict[str, object] = {"data.root": str(SHARED_MEDMNIST)}
    else:
        source = {"data.path": str(write_medmnist_npz(tmp_path / "pneumonia.npz", "pneumoniamnist", n=(256, 64, 61)))}
    return {**source, "data.subsample": {"train": 256, "val": 64, "test": 61}}


def sweep(path: Path, *args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess:
    return medrobust("sweep", str(path), "--tracking-uri", uri, *args, cwd=cwd)


def sweep_runs(client: MlflowClient, name: str = "tests") -> list:
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


@pytest.mark.slow  # about a minute; siblings: test_sweep_against_a_real_mlflow_server (a sweep),
# test_ddp_small_splits (a DDP fit) and test_robustness_evaluation's single-and-DDP test (DDP against one process)
def test_sweep_with_a_ddp_child(tmp_path) -> None:
    """Parent + 2 children, one of them 2 DDP processes (gloo): 3 runs, all FINISHED; the DDP child's best
    checkpoint, evaluated again on one process, gives exactly the test metrics the child logged."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_sweep(
        tmp_path / "ddp.yaml",
        name="ddp",
        experiment="tests",
        base=[str(SWEEP_BASE)],
        overrides={**TINY, **data_overrides(tmp_path), "callbacks.AdversarialTraining.eps": 0},
        points=[
            {"trainer.devices": 1},
            # Same global batch (2 x 32) as the single process; DDP shards and reorders the data.
            {"trainer.devices": 2, "trainer.strategy": "ddp", "data.batch_size": 32},
        ],
    )
    proc = sweep(path, cwd=tmp_path, uri=uri)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    runs = sweep_runs(client)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    parent, single, ddp = runs
    assert parent.data.tags["sweep.role"] == "parent"
    assert {single.data.tags["mlflow.parentRunId"], ddp.data.tags["mlflow.parentRunId"]} == {parent.info.run_id}
    assert ddp.data.params["trainer.strategy"] == "ddp" and ddp.data.params["trainer.devices"] == "2"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"tradeoff.json", "tradeoff_table.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/tradeoff_adversarial.png", "plots/tradeoff_shift.png"} <= plots
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "tradeoff.json", str(tmp_path))).read_text())
    assert len(table["runs"]) == 2
    for run in (single, ddp):
        assert {"summary/clean_acc", "summary/adv_acc/linf_8_255", "summary/shift_bal_acc"} <= set(run.data.metrics)
        # Each test sample counted once, on 1 process or 2.
        report = json.loads(
            Path(
                client.download_artifacts(run.info.run_id, "robustness.json", str(tmp_path / run.info.run_id))
            ).read_text()
        )
        assert {r["n"] for r in report["results"]} == {61}

    # The DDP child's checkpoint, tested again on one process.
    best = ddp.data.tags["best_checkpoint"]
    (ddp_config,) = (tmp_path / "runs" / "sweeps" / "ddp").glob("001_*.yaml")  # the config the driver wrote
    again = medrobust(
        "test",
        "--config",
        str(ddp_config),
        f"--ckpt_path={best}",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.logger.init_args.run_id=null",
        "--trainer.logger.init_args.run_name=again",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = next(r for r in sweep_runs(client) if r.info.run_name == "again")
    for key in ["test/acc", "test/bal_acc", "test/auroc", "test/adv/pgd3/linf_8_255/acc", "test/shift/mean/bal_acc"]:
        assert rerun.data.metrics[key] == pytest.approx(ddp.data.metrics[key], abs=1e-6), key

    # Training curves: DDP sees the same data in another order, in per-rank batches of 32 (BatchNorm statistics
    # per rank), so they are close, not equal. Tolerance: 0.1 in mean training loss per epoch.
    history = {
        name: [m.value for m in client.get_metric_history(run.info.run_id, "train/loss_epoch")]
        for name, run in (("single", single), ("ddp", ddp))
    }
    print("train/loss_epoch per epoch:", history)
    assert len(history["single"]) == len(history["ddp"]) == 2
    for a, b in zip(history["single"], history["ddp"], strict=True):
        assert abs(a - b) < 0.1, history


@dataclass
class HttpSweep:
    """A two-point sweep run against a real ``mlflow server``: its second point alone (as an array task would run
    it), then the whole sweep. Shared by the tests that read it and the test that relaunches it."""

    root: Path
    path: Path
    server: str  # the server's URL
    uri: str  # the same with credentials, which the server ignores
    only: subprocess.CompletedProcess
    proc: subprocess.CompletedProcess
    only_end_time: int | None  # when the point run alone ended, before the whole sweep ran


SECRET = "s3cr3t-pw"


@pytest.fixture(scope="module")
def http_sweep(tmp_path_factory) -> HttpSweep:
    root = tmp_path_factory.mktemp("http_sweep")
    backend = f"sqlite:///{root / 'server.db'}"
    with LocalMlflowServer(backend, str(root / "artifacts"), log=root / "server.log") as server:
        path = write_sweep(
            root / "http.yaml",
            name="http",
            experiment="tests",
            base=[str(SWEEP_BASE)],
            overrides={**TINY, **data_overrides(root), "trainer.max_epochs": 1, "data.shifts": TINY["data.shifts"][:1]},
            grid={"callbacks.AdversarialTraining.eps": [0, "8/255"]},
        )
        # Issue 9.11: a tracking URI with credentials (the server ignores them) is used, and persisted nowhere.
        uri = server.url.replace("http://", f"http://alice:{SECRET}@")
        only = sweep(path, "--point", "1", cwd=root, uri=uri)
        children = [r for r in sweep_runs(MlflowClient(server.url)) if r.data.tags.get("sweep.role") == "child"]
        ended = [r.info.end_time for r in children]
        proc = sweep(path, cwd=root, uri=uri) if only.returncode == 0 else only
        yield HttpSweep(root, path, server.url, uri, only, proc, ended[0] if len(ended) == 1 else None)


def test_sweep_against_a_real_mlflow_server(http_sweep) -> None:
    tmp_path, mlflow_server, uri, secret = http_sweep.root, http_sweep.server, http_sweep.uri, SECRET
    only, proc = http_sweep.only, http_sweep.proc
    assert only.returncode == 0, only.stdout[-3000:] + only.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the second point ran alone first; the whole sweep then ran the first and left the second, FINISHED, alone
    client = MlflowClient(mlflow_server)
    runs = sweep_runs(client)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    parent, *children = runs
    (done,) = [c for c in children if c.data.tags["sweep.label"] == "eps=8/255"]
    assert done.info.end_time == http_sweep.only_end_time  # not rerun
    assert secret not in proc.stdout + proc.stderr
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    # Issue 24.1: the parent and each child announced with name, id and link (the server's, without credentials)
    first = next(c for c in children if c.info.run_id != done.info.run_id)
    for run, event, out in [
        (parent, "started parent", only.stdout),
        (parent, "continuing parent", proc.stdout),
        (parent, "FINISHED parent", proc.stdout),
        (done, "started", only.stdout),
        (first, "started", proc.stdout),
        (first, "finished", proc.stdout),
    ]:
        info = run.info
        banner = f"medrobust: {event} run {info.run_name!r} (id {info.run_id}) in experiment 'tests'"
        assert f"{banner}\n  {mlflow_server}/#/experiments/{info.experiment_id}/runs/{info.run_id}" in out, out
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "summary/adv_acc/linf_8_255" in child.data.metrics
        assert {"config.yaml", "robustness.json", "shift.json"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)
        }
    report = json.loads(Path(client.download_artifacts(parent.info.run_id, "tradeoff.json", str(tmp_path))).read_text())
    assert sorted(r["group"] for r in report["runs"]) == ["eps=0", "eps=8/255"]
    assert "plots/tradeoff_adversarial.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    # And `medrobust report` rebuilds the same table over HTTP, for the parent run or the whole experiment.
    rep = medrobust_in_process("report", "tests", "--tracking-uri", uri, cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "| eps=8/255 | 1 |" in rep.stdout and secret not in rep.stdout + rep.stderr
    assert all(f"{c.info.run_name} ({c.info.run_id[:8]})" in rep.stdout for c in children)  # name and short id
    for child in children:  # params, tags, config.yaml
        assert secret not in json.dumps([child.data.params, child.data.tags])
        config = Path(client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path / child.info.run_id)))
        assert secret not in config.read_text()
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]  # child configs and checkpoints
    assert any(p.suffix == ".ckpt" for p in written) and any(p.suffix == ".yaml" for p in written)
    for file in written:
        assert secret.encode() not in file.read_bytes(), file
    ckpt = next(p for p in written if p.name == "last.ckpt")
    assert torch.load(ckpt, weights_only=True)["mlflow"]["tracking_uri"].startswith("http://***@127.0.0.1")


def test_a_relaunch_never_counts_children_of_another_protocol(http_sweep) -> None:
    """Issue 25.9/25.21: after a base config or an override changed, or a point left the file, a relaunch is
    refused, naming the points; a setting that changes no number (the evaluation batch size) is no new protocol.
    The relaunches of the finished HTTP sweep (its file edited, then restored) run in this process: none trains."""
    assert http_sweep.proc.returncode == 0, http_sweep.proc.stderr[-3000:]
    client, path, original = MlflowClient(http_sweep.server), http_sweep.path, http_sweep.path.read_text()

    def relaunch() -> subprocess.CompletedProcess:
        path.write_text(yaml.safe_dump(spec))
        return medrobust_in_process("sweep", str(path), "--tracking-uri", http_sweep.uri, cwd=http_sweep.root)

    spec, runs = yaml.safe_load(original), len(sweep_runs(client))  # the sweep's 3, and any report run
    try:
        spec["overrides"]["data.eval_batch_size"] = 7
        same = relaunch()
        assert same.returncode == 0 and len(sweep_runs(client)) == runs, same.stdout + same.stderr
        spec["grid"]["callbacks.AdversarialTraining.eps"] = [0]  # a point dropped: its child would stay in the report
        dropped = relaunch()
        assert dropped.returncode == 2 and "eps=8/255 (no longer in the file)" in dropped.stderr, dropped.stderr
        spec["grid"]["callbacks.AdversarialTraining.eps"] = [0, "8/255"]
        spec["overrides"]["trainer.max_epochs"] = 2
        changed = relaunch()
        assert changed.returncode == 2 and "run with other configs" in changed.stderr, changed.stderr[-2000:]
        assert "eps=0, eps=8/255" in changed.stderr and len(sweep_runs(client)) == runs
    finally:
        path.write_text(original)


@pytest.mark.slow  # about 65 s; test_a_relaunch_never_counts_children_of_another_protocol relaunches in the default run
def test_a_killed_sweep_relaunches_without_rerunning_or_duplicating(tmp_path) -> None:
    """SIGKILL the whole sweep (driver and child) while its second (last) child trains; rerunning the same command
    marks that child KILLED, resumes it in the same run and leaves the finished one alone. (A relaunch that goes on
    to points never started: test_sweep_against_a_real_mlflow_server.)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_sweep(
        tmp_path / "kill.yaml",
        name="kill",
        experiment="tests",
        base=[str(SWEEP_BASE)],
        overrides={
            **TINY,
            **data_overrides(tmp_path),
            **STANDARD_NO_SHIFT,
            "trainer.max_epochs": 3,
        },
        grid={"seed_everything": [0, 1]},
    )
    cmd = [sys.executable, "-m", "medrobust.experiments", "sweep", str(path), "--tracking-uri", uri]
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 (the sweep holds it until killed)
    first = subprocess.Popen(
        cmd, cwd=tmp_path, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    client = MlflowClient(uri)
    deadline = time.time() + 300
    while True:
        children = [r for r in sweep_runs(client) if r.data.tags.get("sweep.role") == "child"]
        second = [r for r in children if r.data.tags.get("sweep.label") == "seed=1"]
        if second:
            info = second[0].info
            last = tmp_path / "runs" / info.experiment_id / info.run_id / "checkpoints" / "last.ckpt"
            if last.is_file():  # written (atomically) after the epoch's validation: kill mid-training
                break
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "the sweep never reached its second child"
        time.sleep(0.3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {r.data.tags["sweep.label"]: r for r in sweep_runs(client) if r.data.tags.get("sweep.role") == "child"}
    assert before["seed=0"].info.status == "FINISHED" and before["seed=1"].info.status == "RUNNING"

    second_try = sweep(path, cwd=tmp_path, uri=uri)
    assert second_try.returncode == 0, second_try.stdout[-3000:] + second_try.stderr[-3000:]
    assert "marked KILLED" in second_try.stdout
    runs = sweep_runs(client)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # parent + 2, no duplicates
    after = {r.data.tags["sweep.label"]: r for r in runs if r.data.tags.get("sweep.role") == "child"}
    assert after["seed=0"].info.end_time == before["seed=0"].info.end_time  # not rerun
    assert after["seed=0"].data.tags["sweep.attempt"] == "1"
    assert after["seed=1"].info.run_id == before["seed=1"].info.run_id
    assert after["seed=1"].data.tags["sweep.attempt"] == "2" and "sweep.stale" in after["seed=1"].data.tags
    assert "--ckpt_path=" in second_try.stdout, second_try.stdout[-2000:]  # resumed from its last checkpoint
    epochs = [m.step for m in client.get_metric_history(after["seed=1"].info.run_id, "val/auroc")]
    assert len(epochs) >= 3


@pytest.mark.slow  # about a minute; test_robustness_evaluation keeps a DDP run in the default run
def test_a_failed_ddp_child_resumes_in_the_same_run(tmp_path) -> None:
    """Both processes of a DDP child fail at epoch 1; rerunning the sweep resumes that child, on 2 processes again,
    from its last checkpoint and into the same MLflow run (one run, FINISHED, every epoch's validation once)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = yaml.safe_load(SWEEP_BASE.read_text())
    base["trainer"]["callbacks"].append(
        {"class_path": "fail_once.FailOnce", "init_args": {"marker": str(tmp_path / "failed"), "epoch": 1}}
    )
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = write_sweep(
        tmp_path / "ddp_resume.yaml",
        name="ddp_resume",
        experiment="tests",
        base=[str(tmp_path / "base.yaml")],
        overrides={
            **TINY,
            **data_overrides(tmp_path),
            **STANDARD_NO_SHIFT,
            "trainer.max_epochs": 3,
            "trainer.devices": 2,
            "trainer.strategy": "ddp",
            "data.batch_size": 32,
        },
    )
    first = sweep(path, cwd=tmp_path, uri=uri)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    client = MlflowClient(uri)
    (child,) = [r for r in sweep_runs(client) if r.data.tags.get("sweep.role") == "child"]
    assert child.info.status == "FAILED"
    assert {p.name for p in tmp_path.glob("failed.rank*")} == {"failed.rank0", "failed.rank1"}

    second = sweep(path, cwd=tmp_path, uri=uri)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "--ckpt_path=" in second.stdout
    runs = sweep_runs(client)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    (after,) = [r for r in runs if r.data.tags.get("sweep.role") == "child"]
    assert after.info.run_id == child.info.run_id and after.data.tags["sweep.attempt"] == "2"
    epochs = [m.step for m in client.get_metric_history(after.info.run_id, "val/auroc")]
    assert len(epochs) == 3, epochs  # epoch 0 before the failure, 1 and 2 after the resume
    assert "test/acc" in after.data.metrics and after.data.params["trainer.devices"] == "2"


def test_stale_detection_by_process_and_by_heartbeat(tmp_path) -> None:
    """RUNNING children: this host's dead process -> KILLED; another host's old heartbeat -> KILLED; another host's
    fresh heartbeat -> left alone (it is running there) and skipped by the driver."""
    from medrobust.experiments.sweeping.sweep_runner import SweepRunner

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec.load(write_sweep(tmp_path / "s.yaml", experiment="tests", grid={"seed_everything": [0, 1, 2]}))
    runner = SweepRunner(spec, uri, stale_after=60, out=open(os.devnull, "w"))  # noqa: SIM115
    parent = runner.ensure_parent()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    tags = {
        0: {"sweep.host": runner.host, "sweep.pid": str(dead.pid)},
        1: {"sweep.host": "elsewhere", "sweep.heartbeat": str(int(now - 3600))},
        2: {"sweep.host": "elsewhere", "sweep.heartbeat": str(int(now))},
    }
    for point in runner.points:
        run = runner.client.create_run(
            runner.experiment_id,
            tags={
                "mlflow.parentRunId": parent,
                "sweep.point": point.key,
                "sweep.label": point.label,
                **tags[point.index],
            },
        )
        assert run.info.status == "RUNNING"
    runner.mark_stale(runner.children())
    status = {
        r.data.tags["sweep.label"]: (r.info.status, r.data.tags.get("sweep.stale", ""))
        for r in runner.children().values()
    }
    assert status["seed=0"][0] == "KILLED" and "is gone" in status["seed=0"][1]
    assert status["seed=1"][0] == "KILLED" and "no heartbeat" in status["seed=1"][1]
    assert status["seed=2"] == ("RUNNING", "")


def test_report_on_an_experiment_of_runs_made_without_a_sweep(tmp_path) -> None:
    """`medrobust report <experiment>`: runs named alike are one point, their seeds averaged; parents are left out.
    Issue 9.23: the report reads the runs and writes only into its own report run."""
    from medrobust.experiments.reporting.report import report_target
    from medrobust.experiments.reporting.tradeoff_record import log_report

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("study", artifact_location=str(tmp_path / "artifacts"))
    for name, seed, acc, adv in [("standard", 0, 0.86, 0.0), ("standard", 1, 0.84, 0.02), ("pgd_at", 0, 0.82, 0.66)]:
        run = client.create_run(exp, run_name=name)
        client.log_param(run.info.run_id, "seed_everything", seed)
        client.log_metric(run.info.run_id, "test/acc", acc)
        client.log_metric(run.info.run_id, "test/adv/worst/linf_8_255/acc", adv)
        client.set_terminated(run.info.run_id)
    before = {r.info.run_id: (r.data.metrics, r.info.end_time) for r in client.search_runs([exp])}
    report_id, rows, axes = report_target(client, "study")
    report = log_report(client, report_id, rows, axes)
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"run=standard", "run=pgd_at"} and groups["run=standard"]["n"] == 2
    assert groups["run=standard"]["clean_acc/mean"] == pytest.approx(0.85)
    assert report["pareto_front"]["linf_8_255"] == ["run=pgd_at", "run=standard"]
    after = {r.info.run_id: (r.data.metrics, r.info.end_time) for r in client.search_runs([exp])}
    assert {k: v for k, v in after.items() if k != report_id} == before  # the studied runs are untouched
    # Asking again reuses the report run instead of adding one.
    assert report_target(client, "study")[0] == report_id


def test_imbalanced_test_labels_compare_balanced_accuracy_and_flag_constant_classifiers() -> None:
    """Issue 9.24: on an imbalanced test set a model answering the majority class keeps its accuracy under attack and
    looked the most robust; by default the report then compares balanced accuracy, and flags that model."""
    common = {"summary/test_class_ratio": 1.67}
    constant = {"summary/clean_acc": 0.62, "summary/clean_bal_acc": 0.5, "summary/adv_acc/linf_8_255": 0.62}
    constant |= {"summary/adv_bal_acc/linf_8_255": 0.5, "summary/clean_top_pred_share": 1.0}
    robust = {"summary/clean_acc": 0.80, "summary/clean_bal_acc": 0.75, "summary/adv_acc/linf_8_255": 0.33}
    robust |= {"summary/adv_bal_acc/linf_8_255": 0.55, "summary/clean_top_pred_share": 0.7}
    rows = [
        RunRow("a", "standard", "FINISHED", {"eps": "0"}, common | constant),
        RunRow("b", "pgd_at", "FINISHED", {"eps": "8/255"}, common | robust),
    ]
    report = build_report(rows, ["eps"])
    assert report["metric"] == "bal_acc"
    assert report["pareto_front"]["linf_8_255"] == ["eps=8/255"]  # by accuracy, eps=0 dominated on the y axis
    assert build_report(rows, ["eps"], metric="acc")["pareto_front"]["linf_8_255"] == ["eps=0", "eps=8/255"]
    assert report["near_constant"] == ["standard: clean"]
    table = format_table(report)
    assert "near-constant: standard: clean" in table and "by balanced accuracy" in table
    assert "0.750 |" in table and "[" not in table.split("\n\n")[0]  # one run per point: no interval to show


def test_the_report_reads_the_label_aware_near_constant_flags_its_runs_carry() -> None:
    """A model that predicts a 96% majority class 96% of the time is not collapsed (the tags its test wrote say so,
    judged against the labels); one flagged under attack is flagged at that threat only."""
    summary = {"summary/clean_acc": 0.96, "summary/clean_top_pred_share": 0.96}
    summary |= {"summary/adv_acc/linf_8_255": 0.9, "summary/adv_top_pred_share/linf_8_255": 0.99}
    summary |= {"summary/adv_acc/linf_2_255": 0.95, "summary/adv_top_pred_share/linf_2_255": 0.96}
    tagged = {"test.near_constant": "false", "robustness.near_constant": "pgd20/linf_8_255,worst/linf_8_255"}
    assert RunRow("a", "majority", "FINISHED", {}, summary, tagged).near_constant == ["linf_8_255"]
    assert RunRow("a", "untagged", "FINISHED", {}, summary).near_constant == ["clean", "linf_8_255", "linf_2_255"]


def test_a_child_keeps_the_logger_settings_of_its_base() -> None:
    """A run file names its logger's settings without its class (the command's default), or by the pre-namespace
    path; a sweep child keeps them either way, and drops those of another logger class."""
    from medrobust.experiments.sweeping.sweep_runner import LOGGER_CLASS, logger_settings

    settings = {"tags": {"team": "x"}, "artifact_location": "/a"}
    for class_path in (None, LOGGER_CLASS, "experiments.mlflow_logger.MLflowRunLogger"):
        logger = {"init_args": settings} | ({"class_path": class_path} if class_path else {})
        assert logger_settings(logger) == settings
    assert logger_settings({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}) == {}


def test_runs_named_alike_are_one_point_only_when_they_repeat_it() -> None:
    """Review of issue 24: outside a sweep, runs that share a name form one point; the table says when they are not
    repeats over seeds (settings differ, or a seed is used twice), and a metric only one of them has shows no
    spread."""
    base = {"summary/clean_acc": 0.8, "summary/clean_bal_acc": 0.7}
    rows = [
        RunRow("a", "arm", "FINISHED", {"run": "arm", "seed_everything": "0"}, base, config={"model.lr": "0.001"}),
        RunRow(
            "b",
            "arm",
            "FINISHED",
            {"run": "arm", "seed_everything": "0"},
            base | {"summary/clean_auroc": 0.9},
            config={"model.lr": "0.01"},
        ),
    ]
    table = format_table(build_report(rows))
    assert "settings differ: model.lr" in table and "a seed repeats" in table
    assert "| 0.900 |" in table  # clean_auroc: one run has it
    same = [
        RunRow(r.run_id, r.name, r.status, {"run": "arm", "seed_everything": s}, base, config={"model.lr": "1"})
        for r, s in zip(rows, "01", strict=True)
    ]
    table = format_table(build_report(same))
    assert "differ" not in table and "repeats" not in table and "0.800 [0.800, 0.800]" in table


def test_a_table_without_autoattack_is_marked_pgd_only() -> None:
    """Issue 25.1: robust accuracy from FGSM and PGD alone is an upper bound of unknown tightness; the table says so
    and names the suite."""
    summary = {"summary/clean_bal_acc": 0.8, "summary/adv_bal_acc/linf_8_255": 0.4}

    def row(seed: str, attacks: list[str]) -> RunRow:
        return RunRow(
            f"r{seed}", f"n{seed}", "FINISHED", {"eps": "0", "seed_everything": seed}, summary, {}, {}, attacks
        )

    pgd = format_table(build_report([row("0", ["fgsm", "pgd20"]), row("1", ["fgsm", "pgd20"])], metric="bal_acc"))
    assert "(fgsm, pgd20)" in pgd and "PGD ONLY" in pgd
    full = format_table(build_report([row("0", ["autoattack", "pgd20"]), row("1", ["pgd20"])], metric="bal_acc"))
    assert "(autoattack, pgd20)" in full and "PGD ONLY" not in full
