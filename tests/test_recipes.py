"""The recipes of docs/recipes.md, run from the page itself: verbatim in the slow step (real PneumoniaMNIST, the
page's epochs and models), and shortened (a tiny network, 1 epoch, subsampled splits), both in the slow step; the
default run checks the page's commands. Both runs check what the page says each recipe leaves in MLflow."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SHARED_MEDMNIST
from mlflow import MlflowClient
from test_cli import medrobust_in_process

from medrobust.utilities.hashing import file_md5
from medrobust.utilities.model_checkpoint import fetch_checkpoint

PAGE = REPO / "docs" / "recipes.md"
#: appended to each fit and test of the default run: the same commands, seconds instead of minutes
SHORT = [
    "--model.model_name=test_resnet",
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--data.subsample={train: 256, val: 64, test: 64}",
    "--mlflow_model.log_model=false",  # tests/test_mlflow_model.py checks the logged model
]


def recipes() -> dict[str, list[str]]:
    """Recipe title -> its shell lines (continuations joined), in page order."""
    out: dict[str, list[str]] = {}
    title = "setup"
    for block in re.finditer(r"^## ([^\n]+)$|^```bash\n(.*?)^```", PAGE.read_text(), re.M | re.S):
        if block.group(1):
            title = block.group(1)
            continue
        text = block.group(2).replace("\\\n", " ")
        out.setdefault(title, []).extend(line.strip() for line in text.splitlines() if line.strip())
    return out


def test_the_page_has_three_recipes_of_medrobust_commands() -> None:
    found = recipes()
    assert found.pop("setup") == ["export MEDMNIST_ROOT=../shared/data/medmnist:~/.medmnist"]
    assert len(found) == 3
    for title, lines in found.items():
        assert lines and all(line.startswith("medrobust ") for line in lines), title


def check_records(store: Path, tiny: bool) -> None:
    """What the page promises each recipe leaves in the store."""
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)

    def run(experiment: str, name: str):
        found = client.get_experiment_by_name(experiment)
        assert found is not None, experiment
        (match,) = client.search_runs([found.experiment_id], f"tags.`mlflow.runName` = '{name}'")
        assert match.info.status == "FINISHED", (experiment, name)
        return match

    # 1: two arms, the same selection rule, PGD numbers, and a report of both
    baseline, defended = run("my_defence", "baseline"), run("my_defence", "fast_at_2")
    for arm in (baseline, defended):
        assert arm.data.tags["selection.rule"] == "last"
        assert "test/adv/pgd20/linf_2_255/bal_acc" in arm.data.metrics
    assert float(defended.data.params["train.threat.eps"]) == pytest.approx(2 / 255)
    report = run("my_defence", "tradeoff_report")
    assert {"tradeoff.json", "tradeoff_table.json"} <= {a.path for a in client.list_artifacts(report.info.run_id)}
    table = json.loads(Path(client.download_artifacts(report.info.run_id, "tradeoff.json", str(store))).read_text())
    assert sorted(g["group"] for g in table["groups"]) == ["run=baseline", "run=fast_at_2"]
    # 2: the student records the teacher run its name resolved to, and the file's MD5
    teacher, student = run("my_distillation", "teacher"), run("my_distillation", "student")
    assert student.data.params["distill.teacher.run_id"] == teacher.info.run_id
    best, _ = fetch_checkpoint(teacher.info.run_id, tracking_uri, store / "teacher")  # its model's, rebuilt
    assert student.data.params["distill.teacher.md5"] == file_md5(best)
    assert student.data.params["model.model_name"] == ("test_resnet" if tiny else "resnet10t")
    assert {"train/loss/distill/layer3_epoch", "train/loss/distill/logits_epoch"} <= set(student.data.metrics)
    run("my_distillation", "student_alone")
    # 3: AutoAttack on the CPU config, from recipe 1's defended run, recorded by id and MD5
    evaluated = run("my_autoattack", "fast_at_2")
    tags = evaluated.data.tags
    assert tags["test.checkpoint.source"] == evaluated.data.params["ckpt_path"] == "mlflow:my_defence/fast_at_2"
    assert tags["test.checkpoint.run_id"] == defended.info.run_id
    best, _ = fetch_checkpoint(defended.info.run_id, tracking_uri, store / "defended")
    assert tags["test.checkpoint.md5"] == file_md5(best)
    assert evaluated.data.metrics["test/adv/worst/linf_8_255/n"] == 64
    assert "test/adv/autoattack/linf_8_255/bal_acc" in evaluated.data.metrics
    params = evaluated.data.params
    assert params["callbacks.RobustnessEvaluation.autoattack_steps"] == "100"
    assert params["callbacks.RobustnessEvaluation.l2_eps"] == "[]" and params["robustness.grid"].startswith("['linf:")


def workspace(tmp_path: Path) -> Path:
    """A checkout's layout: the repository's configs under ``main/``, the shared data beside it."""
    main = tmp_path / "main"
    main.mkdir()
    (main / "experiments").symlink_to(REPO / "experiments")
    (main / "examples").symlink_to(REPO / "examples")
    (tmp_path / "shared").symlink_to(SHARED_MEDMNIST.parents[1])
    return main


@pytest.mark.slow  # about 50 s; the default run keeps test_the_page_has_three_recipes_of_medrobust_commands
@pytest.mark.skipif(not SHARED_MEDMNIST.is_dir(), reason="the recipes use the real PneumoniaMNIST in ../shared")
def test_the_recipes_shortened_in_process(tmp_path) -> None:
    """Every command of the page, in order, with :data:`SHORT` appended to each fit and test."""
    main = workspace(tmp_path)
    env = {"MEDMNIST_ROOT": f"{tmp_path / 'shared' / 'data' / 'medmnist'}", "MLFLOW_TRACKING_URI": ""}
    for title, lines in recipes().items():
        for line in lines:
            if not line.startswith("medrobust "):
                continue
            args = shlex.split(line)[1:]
            if args[0] in ("fit", "test"):
                args += SHORT
            result = medrobust_in_process(*args, cwd=main, **env)
            assert result.returncode == 0, (title, line, result.stderr[-3000:])
    check_records(main, tiny=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three five-minute recipes, past the suite's 10-minute cap (CI: 10-13 min)
@pytest.mark.skipif(not SHARED_MEDMNIST.is_dir(), reason="the recipes use the real PneumoniaMNIST in ../shared")
def test_the_recipes_verbatim(tmp_path) -> None:
    """Each recipe's block as the page writes it, in bash, from a checkout's root; about five minutes each on 2
    cores (printed; the sibling in the default run is the shortened one)."""
    main = workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MEDMNIST_ROOT", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["HOME"] = str(tmp_path / "home")  # ~/.medmnist, the page's download fallback, stays inside tmp_path
    found = recipes()
    setup = found.pop("setup")
    for title, lines in found.items():
        start = time.monotonic()
        script = "\n".join(["set -euo pipefail", *setup, *lines])
        result = subprocess.run(["bash", "-c", script], cwd=main, env=env, capture_output=True, text=True)
        assert result.returncode == 0, (title, result.stderr[-4000:])
        print(f"recipe {title!r}: {time.monotonic() - start:.0f} s")
    check_records(main, tiny=False)
