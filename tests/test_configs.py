"""Every YAML under experiments/ is instantiated, so a broken config fails CI rather than a user."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_MEDMNIST, write_medmnist_npz

from medrobust.experiments.cli import MedRobustCLI

# Sweep files are not Lightning configs; tests/test_sweep.py composes and instantiates their points.
CONFIGS = sorted(
    p for p in (REPO / "experiments").rglob("*.yaml") if "sweeps" not in p.relative_to(REPO / "experiments").parts[:1]
)


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_config_instantiates(config: Path, tmp_path, tracking_uri) -> None:
    # Keep the config's dataset; serve it from a synthetic stand-in unless the real file is here.
    data_config = yaml.safe_load(config.read_text()).get("data") or {}
    flag, size = data_config.get("flag", "pneumoniamnist"), data_config.get("size", 28)
    data = (
        [f"--data.root={SHARED_MEDMNIST}"]
        if (SHARED_MEDMNIST / f"{flag}.npz").is_file() and size == 28
        else [f"--data.path={write_medmnist_npz(tmp_path / f'{flag}.npz', flag, size=size)}"]
    )
    # GPU configs ask for accelerator gpu; this checks the config, not the hardware.
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
    cli = MedRobustCLI(args=["--config", str(config), *data, *cpu], run=False)
    assert cli.model.num_classes == cli.datamodule.num_classes
    assert cli.trainer.max_epochs is None or cli.trainer.max_epochs >= 1  # evaluation-only configs set none
    assert cli.trainer.checkpoint_callback is not None
    assert type(cli.trainer.logger).__name__ == "MLflowRunLogger"


def test_every_run_starts_from_the_base_config(tmp_path) -> None:
    """experiments/configs/base.yaml is the default config file of every subcommand; it decides no result: its model,
    data and checkpoint values are the code's defaults, and what decides a result stays in the run's own config."""
    import inspect

    import yaml

    from medrobust.callbacks.selection_checkpoint import SelectionCheckpoint
    from medrobust.datamodules.medmnist import MedMNISTDataModule
    from medrobust.experiments.cli import BASE_CONFIG, MedRobustCLI
    from medrobust.lightning_modules.classifier import ClassifierModule

    base = yaml.safe_load(BASE_CONFIG.read_text())
    assert set(base["trainer"]) == {"log_every_n_steps"}  # no max_epochs, devices or precision for everybody
    for section, cls in (
        ("model", ClassifierModule),
        ("data", MedMNISTDataModule),
        ("checkpoint", SelectionCheckpoint),
    ):
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        assert all(defaults[k] == v for k, v in base[section].items()), section
    (tmp_path / "run.yaml").write_text("data:\n  flag: pneumoniamnist\n")
    cli = MedRobustCLI(args=["--config", str(tmp_path / "run.yaml")], run=False)
    assert cli.config["trainer"]["log_every_n_steps"] == 10 and cli.config["trainer"]["max_epochs"] is None
