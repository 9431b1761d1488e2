"""The benchmark scripts run (tiny settings, no timing asserted: these machines are shared and noisy)."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys

import pytest
import torch
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


def run_benchmark_in_process(script: str, *args: str) -> str:
    """The same, as ``python benchmarks/SCRIPT ARGS`` run in this process (its folder first on ``sys.path``, as for a
    script), without a subprocess's seconds of imports; its stdout. State it may change is restored."""
    path = REPO / "benchmarks" / script
    saved = sys.argv, list(sys.path), set(sys.modules), os.getcwd(), torch.get_num_threads()
    out = io.StringIO()
    sys.argv, sys.path[:0] = [str(path), *args], [str(path.parent)]
    os.chdir(path.parent)
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[3])
        torch.set_num_threads(saved[4])
        for name in set(sys.modules) - saved[2]:  # the scripts' own modules (_common, train_step, ...)
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(path.parent)):
                del sys.modules[name]
    assert "ratio" in out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize(
    "script, args",
    [
        # distillation (resnet18) and the peer pipeline take about a minute each on 2 cores: -m slow
        ("train_step.py", ["--model", "test_resnet", "--steps", "2", "--warmup", "1", "--rounds", "1"]),
        ("data_path.py", ["--rounds", "1"]),
        ("shift_suite.py", []),
        (
            "adversarial_step.py",
            ["--model", "test_resnet", "--steps", "1", "--warmup", "1", "--rounds", "1", "--k", "2"],
        ),
        pytest.param(
            "distillation_step.py",
            ["--model", "resnet18", "--steps", "1", "--warmup", "1", "--rounds", "1"],
            marks=pytest.mark.slow,
        ),
        ("detection_fit.py", ["--model", "test_resnet", "--rounds", "1", "--max-train", "256"]),
        ("construction_cost.py", ["--model", "test_resnet", "--iters", "2", "--rounds", "1", "--batch-size", "32"]),
        ("saliency_cost.py", ["--model", "test_resnet", "--rounds", "1", "--ig-steps", "4", "--batch-size", "8"]),
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
    run_benchmark_in_process(script, *args)  # as a script: test_a_benchmark_without_the_official_file_... below


def test_a_benchmark_without_the_official_file_uses_a_synthetic_stand_in(tmp_path) -> None:
    """Issue 9.17: with no official file in reach, the stand-in is given as a user's file (--data.path), so the
    official MD5 check does not reject it (it did, failing README command 2 from a fresh clone)."""
    result = run_benchmark("data_path.py", "--rounds", "1", "--root", str(tmp_path / "none"))
    assert "synthetic" in result.stdout.lower()
