"""Issue 25.9: the shipped study configs train 28 px networks with the small-input stem, and put shortcut markers at
random positions, the fixed corner being a labelled control arm."""

from __future__ import annotations

from pathlib import Path

import yaml

from medrobust.experiments.studies.saliency_alignment import arm
from medrobust.experiments.studies.shortcut_distillation import shortcut_of
from medrobust.experiments.sweeping.sweep_spec import SweepSpec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
#: not studies: the two-minute quickstart and the recipes built on it keep timm's cheaper ImageNet stem (documented)
NOT_STUDIES = {"quickstart.yaml", "recipes/distill_from_teacher.yaml"}


def training_configs() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((EXPERIMENTS / "configs").rglob("*.yaml")):
        name = str(path.relative_to(EXPERIMENTS / "configs"))
        config = yaml.safe_load(path.read_text()) or {}
        if name not in NOT_STUDIES and (config.get("trainer") or {}).get("max_epochs"):
            found.append((name, config))
    return found


def test_every_28px_study_config_uses_the_small_input_stem() -> None:
    at_28 = [(n, c) for n, c in training_configs() if (c.get("data") or {}).get("size", 28) == 28]
    assert len(at_28) >= 15
    assert [n for n, c in at_28 if (c.get("model") or {}).get("small_input") is not True] == []


def test_shortcut_markers_sit_at_random_positions_and_the_fixed_corner_is_a_labelled_control() -> None:
    shortcut = [(n, c["data"]["shortcut"]) for n, c in training_configs() if (c.get("data") or {}).get("shortcut")]
    assert len(shortcut) >= 3 and all(s["position"] == "random" for _, s in shortcut if s["kind"] == "patch")
    for sweep in ("pneumonia_shortcut_distillation_cpu", "breast_shortcut_distillation_cpu"):
        spec = SweepSpec.load(EXPERIMENTS / "sweeps" / f"{sweep}.yaml")
        labels = {shortcut_of(flat(spec.compose(p))) for p in spec.expand()}
        assert {"patch", "patch_fixed_corner_control"} <= labels
    spec = SweepSpec.load(EXPERIMENTS / "sweeps" / "breast_shortcut_saliency_cpu.yaml")
    arms = {arm(flat(spec.compose(p))) for p in spec.expand()}
    assert arms == {"erm", "distilled", "erm_fixed_corner_control", "distilled_fixed_corner_control"}


def flat(config: dict) -> dict[str, str]:
    """The run params a composed config becomes (the ones the study tables read)."""
    params = {f"data.{k}": str(v) for k, v in (config.get("data") or {}).items() if not isinstance(v, dict)}
    params |= {f"data.shortcut.{k}": str(v) for k, v in ((config.get("data") or {}).get("shortcut") or {}).items()}
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        name = callback["class_path"].rpartition(".")[2]
        params |= {f"callbacks.{name}.{k}": str(v) for k, v in (callback.get("init_args") or {}).items()}
        params[f"callbacks.{name}"] = "present"
    return params


def test_the_saliency_table_lists_every_class() -> None:
    """Issue 25.14: the study table's per-class columns come from the runs, every class, in class order."""
    from medrobust.experiments.studies.saliency_alignment import per_class

    metrics = {f"test/saliency/gradient/energy_class{k}": 0.1 for k in range(11)} | {"test/saliency/gradient/iou": 0}
    assert per_class(metrics, "test/saliency") == [f"energy_class{k}" for k in range(11)]
