"""The benchmark scripts run (tiny settings, no timing asserted: these machines are shared and noisy)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a benchmark script from benchmarks/, as a user would; it must succeed and print its ratio."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO / "benchmarks",
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout
    return result


@pytest.mark.parametrize(
    "script, args",
    [
        # Four run in the default test run (training step, data path, adversarial step, fast path); the others, whose
        # code other tests cover, with -m slow (about 8 s each on 2 cores; distillation and peer pipeline a minute).
        ("train_step.py", ["--model", "test_resnet", "--steps", "2", "--warmup", "1", "--rounds", "1"]),
        ("data_path.py", ["--rounds", "1"]),
        pytest.param("shift_suite.py", [], marks=pytest.mark.slow),
        (
            "adversarial_step.py",
            ["--model", "test_resnet", "--steps", "1", "--warmup", "1", "--rounds", "1", "--k", "2"],
        ),
        pytest.param(
            "distillation_step.py",
            ["--model", "resnet18", "--steps", "1", "--warmup", "1", "--rounds", "1"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "detection_fit.py",
            ["--model", "test_resnet", "--rounds", "1", "--max-train", "256"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "construction_cost.py",
            ["--model", "test_resnet", "--iters", "2", "--rounds", "1", "--batch-size", "32"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "saliency_cost.py",
            ["--model", "test_resnet", "--rounds", "1", "--ig-steps", "4", "--batch-size", "8"],
            marks=pytest.mark.slow,
        ),
        (
            "fast_path.py",
            ["--model", "test_resnet", "--steps", "1", "--warmup", "1", "--rounds", "1", "--pgd-steps", "1"],
        ),
        pytest.param(
            "peer_pipeline.py", ["--epochs", "1", "--rounds", "1", "--max-train", "128"], marks=pytest.mark.slow
        ),
    ],
)
def test_benchmark_runs_and_prints_a_ratio(script: str, args: list[str]) -> None:
    run_benchmark(script, *args)


def test_a_benchmark_without_the_official_file_uses_a_synthetic_stand_in(tmp_path) -> None:
    """Issue 9.17: with no official file in reach, the stand-in is given as a user's file (--data.path), so the
    official MD5 check does not reject it (it did, failing README command 2 from a fresh clone)."""
    result = run_benchmark("data_path.py", "--rounds", "1", "--root", str(tmp_path / "none"))
    assert "synthetic" in result.stdout.lower()
