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
