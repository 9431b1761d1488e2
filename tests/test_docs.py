"""The documentation: the MkDocs site builds strictly (a broken link, a missing page or API object fails), every
module has its API section, and the README is a front page whose links resolve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, quiet_trainer

FOLDERS = ("callbacks", "datamodules", "experiments", "lightning_modules", "utilities")


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    page = (tmp_path / "site" / "reference" / "callbacks" / "index.html").read_text()
    assert "RobustnessEvaluation" in page and "doc-class" in page  # the API pages hold the docstrings


def test_every_module_has_an_api_section() -> None:
    documented = set()
    for page in (REPO / "docs" / "reference").glob("*.md"):
        documented |= set(re.findall(r"^::: (\S+)$", page.read_text(), re.MULTILINE))
    modules = {
        "medrobust." + ".".join(path.relative_to(REPO).with_suffix("").parts)
        for folder in FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert not modules - documented, f"modules without an API section in docs/reference: {sorted(modules - documented)}"
    assert not documented - modules, f"API sections of modules that do not exist: {sorted(documented - modules)}"


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert links and not missing, missing


def test_the_evaluation_callback_example_runs_as_written(tmp_path: Path, synthetic_npz) -> None:
    """docs/extending.md's evaluation callback, as written there, under a CSVLogger: the first 20 test images."""
    from lightning.pytorch.loggers import CSVLogger

    from medrobust.datamodules.medmnist import MedMNISTDataModule
    from medrobust.lightning_modules.classifier import ClassifierModule

    page = (REPO / "docs" / "extending.md").read_text().split("## Write your own evaluation callback", 1)[1]
    namespace: dict = {}
    exec(page.split("```python\n", 1)[1].split("```", 1)[0], namespace)
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz("pneumoniamnist", n=(32, 16, 48))), batch_size=16)
    model = ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)
    logger = CSVLogger(tmp_path / "csv", name="docs")
    callback = namespace["FirstImagesAccuracy"](max_samples=20)
    quiet_trainer(tmp_path, logger=logger, callbacks=[callback]).test(model, dm, verbose=False)
    written = json.loads((Path(logger.log_dir) / "first_images.json").read_text())
    assert written == callback.report and written["n"] == 20
