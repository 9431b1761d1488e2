"""Packaging (issue 9.21): every imported distribution is declared, and a non-editable install works on its own."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("lightning_modules", "datamodules", "callbacks", "experiments", "utilities")
#: modules imported only by an optional feature, and the extra that declares them
OPTIONAL = {"experiments/tracking/check_mlflow_ui.py": "ui", "experiments/tracking/ui_model_checks.py": "ui"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in (*PACKAGES, "medrobust", "__future__")}


def test_every_imported_distribution_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    providers = metadata.packages_distributions()
    missing = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            relative = str(path.relative_to(REPO))
            allowed = declared | extras.get(OPTIONAL.get(relative, ""), set())
            for module in _imports(path):
                dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
                if not dists & allowed:
                    missing.setdefault(module, []).append(relative)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


SCRIPT = """
import importlib.resources, pathlib, sys, torch
import medrobust.datamodules
from medrobust.datamodules.corruptions import corrupt
from medrobust.datamodules.corruptions.registry import OPERATION, SEVERITY_PARAMS
installed = pathlib.Path(medrobust.datamodules.__file__)
assert installed.is_relative_to(pathlib.Path(sys.prefix)), installed
done = set()
for flag, params in SEVERITY_PARAMS.items():
    chans = 3 if flag in ("pathmnist", "bloodmnist", "dermamnist", "retinamnist") else 1
    images = torch.randint(0, 256, (2, chans, 28, 28), dtype=torch.uint8)
    for name in params:
        if OPERATION[name] not in done:
            out = corrupt(images, flag, name, 3, seed=0)
            assert out.shape == images.shape and out.dtype == torch.uint8
            done.add(OPERATION[name])
assert done == set(OPERATION.values()), set(OPERATION.values()) - done
assert (importlib.resources.files("medrobust.experiments") / "configs" / "quickstart.yaml").is_file()
print("ok", len(done))
"""


def _source_copy(tmp: Path) -> Path:
    """A clean copy: setuptools builds in the source tree, where a stale build/ or *.egg-info would hide a missing
    package-data entry (and tests write nothing outside tmp_path)."""
    source = tmp / "source"
    ignore = shutil.ignore_patterns(".*", "build", "runs", "mlruns", "*.egg-info", "*.db")
    shutil.copytree(REPO, source, symlinks=True, ignore=ignore)
    return source


def _venv(tmp: Path) -> Path:
    """A fresh virtual environment whose dependencies (torch, ...) come from this one's site-packages, appended after
    its own; this environment's ``.pth`` files (our own editable install among them) are not read there."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def install(tmp: Path, editable: bool) -> Path:
    """medrobust installed from a clean copy of the source, as a wheel or editable; the new environment's python."""
    source = _source_copy(tmp)
    python = _venv(tmp)
    if editable:
        target = ["-e", str(source)]
    else:
        wheel_args = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)]
        build = subprocess.run([sys.executable, "-m", "pip", *wheel_args], capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr[-3000:]
        (wheel,) = tmp.glob("medrobust-*.whl")
        target = [str(wheel)]
        shutil.rmtree(source)  # the wheel must carry everything
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *target],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("wheel"), editable=False)


def test_the_wheel_installs_and_corrupts_without_the_source_tree(wheel_python: Path, tmp_path: Path) -> None:
    """A non-editable install carries its package data: one corruption of each kind (stain_deposit needs the
    vendored inks.npz) and the configs, imported from the installed copy, not the source tree."""
    run = subprocess.run([str(wheel_python), "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")
