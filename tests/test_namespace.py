"""``medrobust.*``: the five folders install under one namespace, so a user's own ``callbacks/`` or ``experiments/``
never shadows ours (issue 23.1); no bare import or class path is left; a run's old config still loads."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_MEDMNIST, write_medmnist_npz
from test_packaging import install

from medrobust.experiments import legacy_class_paths
from medrobust.experiments.cli import MedRobustCLI
from medrobust.experiments.legacy_class_paths import LegacyClassPathWarning, new_class_path

FOLDERS = ("callbacks", "datamodules", "experiments", "lightning_modules", "utilities")
#: source and text files that name modules: code, configs, sweeps, scripts, docs
TEXT = ("*.py", "*.yaml", "*.sh", "*.md", "*.toml")
#: the files that spell the old paths on purpose: the table that upgrades them, and the tests of that
LEGACY = {REPO / "experiments" / "legacy_class_paths.py", Path(__file__).resolve()}
BARE = re.compile(r"(?<![\w./-])(?:callbacks|datamodules|experiments|lightning_modules|utilities)(?:\.\w+)+")


def _tracked(patterns: tuple[str, ...]) -> list[Path]:
    files = subprocess.run(["git", "ls-files", *patterns], capture_output=True, text=True, cwd=REPO, check=True)
    return [REPO / f for f in files.stdout.split()]


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    return found


def _importable(dotted: str) -> bool:
    """Whether ``dotted`` is the pre-namespace path of one of our modules or of a name in one (not, say, the sweep
    override key ``callbacks.AdversarialTraining.eps``, which addresses a callback by its class name)."""
    new = new_class_path(dotted)
    if new is None:
        return False
    try:
        importlib.import_module(new)
        return True
    except ImportError:
        module, _, name = new.rpartition(".")
        try:
            return hasattr(importlib.import_module(module), name)
        except ImportError:
            return False


def test_no_bare_import_or_class_path_is_left() -> None:
    """Every import is ``medrobust.<folder>...``; every class path, ``python -m`` and cross-reference too."""
    bare = [hit for path in _tracked(("*.py",)) for hit in _bare_imports(path)]
    for path in _tracked(TEXT):
        if path.resolve() in LEGACY:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "pre-namespace" in line:
                continue  # the docs' example of what still loads
            for match in BARE.finditer(line):
                if re.search(r"(class_path[\"']?:\s*[\"']?|\+=|-m\s+|~|`)$", line[: match.start()]) and _importable(
                    match.group(0)
                ):
                    bare.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)}")
    for path in _tracked(("*.py",)):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"[\"']-m[\"'],\s*[\"'](callbacks|datamodules|experiments|lightning_modules)\b", line):
                bare.append(f"{path.relative_to(REPO)}:{number}: python -m <bare package>")
    assert not bare, "bare (pre-medrobust.) module paths:\n" + "\n".join(bare)


def test_every_package_folder_is_listed_and_mapped() -> None:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {p.parent.relative_to(REPO).as_posix() for f in FOLDERS for p in (REPO / f).rglob("__init__.py")}
    expected = {"medrobust." + f.replace("/", ".") for f in folders}
    assert set(tool["packages"]) == expected
    assert tool["package-dir"] == {f"medrobust.{f}": f for f in FOLDERS}
    assert not (REPO / "medrobust").exists(), "medrobust is a namespace: no folder, no __init__.py"


def test_an_old_config_with_bare_class_paths_loads_with_a_warning(tmp_path: Path) -> None:
    """A run's config.yaml from before the namespace: its class paths are upgraded, each named in a warning."""
    config = yaml.safe_load((REPO / "experiments" / "configs" / "quickstart.yaml").read_text())
    config["trainer"]["logger"]["class_path"] = "experiments.mlflow_logger.MLflowRunLogger"
    config["trainer"]["callbacks"] = [{"class_path": "callbacks.RobustValidation", "init_args": {"steps": 2}}]
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump(config))
    legacy_class_paths._warned.clear()
    args = ["--config", str(old), "--trainer.callbacks+=callbacks.ShiftEvaluation"]
    with pytest.warns(LegacyClassPathWarning) as caught:
        cli = MedRobustCLI(args=args, run=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "'medrobust.experiments.tracking.mlflow_logger.MLflowRunLogger'" in messages
    assert "'medrobust.callbacks.RobustValidation'" in messages and "'medrobust.callbacks.ShiftEvaluation'" in messages
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert {"RobustValidation", "ShiftEvaluation"} <= set(names)
    assert type(cli.trainer.logger).__module__ == "medrobust.experiments.tracking.mlflow_logger"


def test_upgrade_leaves_other_names_alone() -> None:
    assert new_class_path("torch.optim.Adam") is None and new_class_path("callbacks") is None
    assert new_class_path("lightning_modules.components.detection.Mahalanobis") == (
        "medrobust.lightning_modules.detection.Mahalanobis"
    )
    assert legacy_class_paths.upgrade_legacy({"callbacks.AdversarialTraining.eps": "8/255"}) == {
        "callbacks.AdversarialTraining.eps": "8/255"
    }  # a sweep's override key addresses a callback by class name, not a class path
    assert legacy_class_paths.upgrade_legacy({"experiment_name": "datamodules.medmnist"}) == {
        "experiment_name": "datamodules.medmnist"
    }  # a string that names a module, not a class, is no class path


TINY = [
    "--model.model_name=test_resnet",
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--data.download=false",
    "--data.subsample={train: 64, val: 32, test: 32}",
    "--trainer.logger.init_args.experiment_name=foreign",
]
USERS_OWN = "raise ImportError('the user\\'s own {name} package was imported instead of medrobust.{name}')\n"


@pytest.mark.parametrize(
    "editable",
    # about 30 s each, with -m slow; by default test_packaging installs a wheel and
    # test_the_users_own_packages_never_shadow_ours imports from such a project with this checkout's editable install
    [pytest.param(False, marks=pytest.mark.slow), pytest.param(True, marks=pytest.mark.slow)],
    ids=["wheel", "editable"],
)
def test_runs_from_a_project_with_its_own_callbacks_and_experiments(tmp_path: Path, editable: bool) -> None:
    """Installed as a wheel and editable, driven from a working directory (also on PYTHONPATH) that holds its own
    ``callbacks/``, ``experiments/``, ``datamodules/`` and ``lightning_modules/`` packages, which fail if imported:
    ``medrobust fit`` trains and tests a tracked run, and a ``python -m`` study entry reads it back."""
    python = install(tmp_path / "install", editable=editable)
    project = tmp_path / "project"
    for name in ("callbacks", "experiments", "datamodules", "lightning_modules"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(USERS_OWN.format(name=name))
    if (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        data = [f"--data.root={SHARED_MEDMNIST}"]
    else:
        data = [f"--data.path={write_medmnist_npz(tmp_path / 'pneumonia.npz', 'pneumoniamnist')}"]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(project), "CUDA_VISIBLE_DEVICES": "", "MLFLOW_TRACKING_URI": uri}
    medrobust = python.parent / "medrobust"
    quickstart = REPO / "experiments" / "configs" / "quickstart.yaml"
    fit = subprocess.run(
        [str(medrobust), "fit", "--config", str(quickstart), *data, *TINY],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=project,
        env=env,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    study = subprocess.run(
        [
            str(python),
            "-m",
            "medrobust.experiments.studies.summarize",
            "foreign",
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
        env=env,
    )
    assert study.returncode == 0, study.stderr[-3000:]
    rows = [line for line in study.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 and rows[1].split("|")[2].strip() == "1", study.stdout  # header and the one run
    code = (
        "import medrobust.callbacks as c; print(c.__file__)\ntry:\n import callbacks\nexcept ImportError as e: print(e)"
    )
    where = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=project, env=env, check=True)
    ours, theirs = where.stdout.splitlines()
    assert Path(ours).is_relative_to(tmp_path / "install"), ours  # ours from the new install, not this checkout
    assert "the user's own callbacks package was imported" in theirs  # and theirs is theirs


def test_the_users_own_packages_never_shadow_ours(tmp_path: Path) -> None:
    """From a working directory (also on PYTHONPATH) holding its own ``callbacks/`` ... packages, which fail if
    imported: ``medrobust.*`` are this checkout's, and the user's bare names are the user's."""
    project = tmp_path / "project"
    for name in ("callbacks", "experiments", "datamodules", "lightning_modules"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(USERS_OWN.format(name=name))
    env = {**os.environ, "PYTHONPATH": str(project)}
    code = (
        "import medrobust.callbacks, medrobust.experiments, medrobust.datamodules\n"
        "print(medrobust.callbacks.__file__)\n"
        "for name in ('callbacks', 'experiments'):\n"
        "    try:\n        __import__(name)\n    except ImportError as e:\n        print(e)"
    )
    where = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=project, env=env, check=True
    )
    ours, *theirs = where.stdout.splitlines()
    assert Path(ours).is_relative_to(REPO), ours
    assert theirs == [f"the user's own {n} package was imported instead of medrobust.{n}" for n in ("callbacks",
                      "experiments")]  # fmt: skip


#: the floors, lowest first: a package may import its own floor and the floors below it, never one above
FLOORS = ("utilities", "lightning_modules", "datamodules", "callbacks", "experiments")


def _module_graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports (at any depth: inside functions too)."""
    modules = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(("medrobust", *(parts[:-1] if parts[-1] == "__init__" else parts)))
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            imported |= {t for t in targets if t in modules and t != name}
        graph[name] = imported
    return graph


def test_no_import_circle_and_no_upward_import() -> None:
    """Issue 23.4: the trade-off modules' circle is gone and no other forms; the floors hold."""
    graph = _module_graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            # a package importing its own submodules (through __init__) is not a circle of code
            if len(component) > 1 and not all(
                c.startswith(min(component, key=len) + ".") or c == min(component, key=len) for c in component
            ):
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, circles
    floor = {name: FLOORS.index(name.split(".")[1]) for name in graph}
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if floor[b] > floor[a]]
    assert not upward, upward
