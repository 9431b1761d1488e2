"""Sweep files: the points of a sweep, and the override language that composes each point's config.

A sweep file names base configs and what to vary::

    name: pneumonia_pgd_eps_cpu            # the parent run; relaunching finds it again by this name
    experiment: pneumonia_sweeps
    base: [../configs/sweeps/pneumonia_tradeoff_cpu.yaml]   # relative to the sweep file, merged in order
    overrides: {trainer.max_epochs: 6}    # every point (optional)
    grid:                                  # the Cartesian product, in this order
      callbacks.AdversarialTraining.eps: [0, 2/255, 4/255, 8/255]
      seed_everything: [0, 1]
    points: []                             # more points, each a mapping (optional)
    launcher: null                         # e.g. "torchrun --standalone --nproc_per_node=4" (default: this python)
    metric: bal_acc                        # what the trade-off figures and fronts compare: bal_acc, acc or auto
    mixed_selection: false                 # true: points may select checkpoints by different rules (see below)

Override keys are dotted paths into the config (``trainer.max_epochs``, ``data.batch_size``); ``callbacks.<Class>``
addresses the entry of ``trainer.callbacks`` with that class (``callbacks.AdversarialTraining.eps``), and a
``null`` value for ``callbacks.<Class>`` removes it.

Every point of a sweep selects its checkpoint by the same rule (``checkpoint.rule``): arms of a comparison differ
only in what is compared, and a rule that favours one arm's own objective (clean AUROC for the baseline, robust
accuracy for the defence) is a difference of its own. A sweep whose points resolve to different rules is refused,
naming them, unless the file says ``mixed_selection: true`` (a study of the rules themselves).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medrobust.experiments.config_merge import merge_configs
from medrobust.experiments.reporting.tradeoff import METRICS, display_value, short_key
from medrobust.utilities.errors import InputError

SPEC_KEYS = {
    "name",
    "experiment",
    "base",
    "overrides",
    "grid",
    "points",
    "launcher",
    "args",
    "metric",
    "mixed_selection",
}


class SweepError(InputError):
    """A sweep file or a sweep's MLflow state that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Point:
    """One child: the override values that set it apart, in the sweep's axis order."""

    index: int
    values: dict[str, Any]

    @property
    def key(self) -> str:
        """Stable identity of the point (survives reordering the grid): a hash of its values."""
        text = json.dumps(self.values, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return ",".join(f"{short_key(k)}={display_value(v)}" for k, v in self.values.items()) or "base"


@dataclass
class SweepSpec:
    name: str
    experiment: str
    path: Path
    base: list[Path]
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    launcher: str | None = None
    args: list[str] = field(default_factory=list)
    metric: str = "bal_acc"
    mixed_selection: bool = False

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            raise SweepError(f"sweep file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise SweepError(f"{path}: a sweep file is a mapping with keys {sorted(SPEC_KEYS)}")
        unknown = set(raw) - SPEC_KEYS
        if unknown:
            raise SweepError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(SPEC_KEYS)}")
        for key in ("name", "base"):
            if not raw.get(key):
                raise SweepError(f"{path}: '{key}' is required")
        base = raw["base"] if isinstance(raw["base"], list) else [raw["base"]]
        base_paths = [(path.parent / b).resolve() for b in base]
        for b in base_paths:
            if not b.is_file():
                raise SweepError(f"{path}: base config {b} does not exist")
        grid = raw.get("grid") or {}
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"{path}: grid axis {key!r} must be a non-empty list, got {values!r}")
        points = raw.get("points") or []
        if not all(isinstance(p, dict) for p in points):
            raise SweepError(f"{path}: 'points' must be a list of mappings")
        return cls(
            name=str(raw["name"]),
            experiment=str(raw.get("experiment") or raw["name"]),
            path=path.resolve(),
            base=base_paths,
            overrides=raw.get("overrides") or {},
            grid=grid,
            points=points,
            launcher=raw.get("launcher"),
            args=[str(a) for a in raw.get("args") or []],
            metric=_metric(path, raw.get("metric", "bal_acc")),
            mixed_selection=_flag(path, "mixed_selection", raw.get("mixed_selection", False)),
        )

    @property
    def axes(self) -> list[str]:
        keys = list(self.grid)
        for point in self.points:
            keys += [k for k in point if k not in keys]
        return keys

    def expand(self) -> list[Point]:
        combos = [dict(zip(self.grid, values, strict=True)) for values in itertools.product(*self.grid.values())]
        combos = [c for c in combos if c] + [dict(p) for p in self.points]
        combos = combos or [{}]
        points = [Point(i, c) for i, c in enumerate(combos)]
        keys = [p.key for p in points]
        if len(set(keys)) != len(keys):
            raise SweepError(f"{self.path}: the sweep lists the same point twice")
        if not self.mixed_selection:
            self._check_one_rule(points)
        return points

    def _check_one_rule(self, points: list[Point]) -> None:
        rules: dict[str, list[str]] = {}
        for point in points:
            rule = (self.compose(point).get("checkpoint") or {}).get("rule", "clean_auroc")  # base.yaml's default
            rules.setdefault(str(rule), []).append(point.label)
        if len(rules) > 1:
            found = "; ".join(
                f"{rule}: {', '.join(labels[:3])}{' ...' if len(labels) > 3 else ''}" for rule, labels in rules.items()
            )
            raise SweepError(
                f"{self.path}: the points select checkpoints by different rules ({found}). Arms of a comparison "
                "should differ only in what is compared: set one checkpoint.rule for all (last, or one named rule), "
                "or mixed_selection: true for a study of the rules themselves"
            )

    def base_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for path in self.base:
            config = _merge(config, yaml.safe_load(path.read_text()) or {})
        return config

    def compose(self, point: Point) -> dict[str, Any]:
        """The full config of one child: base configs merged, then ``overrides``, then the point's values."""
        config = self.base_config()
        for key, value in {**self.overrides, **point.values}.items():
            set_override(config, key, value)
        return config


def _flag(path: Path, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise SweepError(f"{path}: {key} must be true or false, got {value!r}")
    return value


def _metric(path: Path, metric: object) -> str:
    if metric not in METRICS:
        raise SweepError(f"{path}: metric {metric!r} is not one of {list(METRICS)}")
    return str(metric)


_merge = merge_configs  # one merge for --config files and sweep bases: trainer.callbacks by class


def set_override(config: dict[str, Any], key: str, value: Any) -> None:
    """Apply one dotted override in place (see the module docstring for ``callbacks.<Class>``)."""
    parts = key.split(".")
    if parts[0] == "callbacks":
        if len(parts) < 2:
            raise SweepError(f"override {key!r}: write callbacks.<Class>[.<arg>]")
        callbacks = config.setdefault("trainer", {}).setdefault("callbacks", []) or []
        config["trainer"]["callbacks"] = callbacks
        matches = [cb for cb in callbacks if str(cb.get("class_path", "")).rsplit(".", 1)[-1] == parts[1]]
        if len(parts) == 2 and value is None:
            config["trainer"]["callbacks"] = [cb for cb in callbacks if cb not in matches]
            return
        if not matches:
            have = [str(cb.get("class_path")) for cb in callbacks]
            raise SweepError(f"override {key!r}: no {parts[1]} in trainer.callbacks (the base config has {have})")
        for cb in matches:
            if len(parts) == 2:
                if not isinstance(value, dict):
                    raise SweepError(f"override {key!r}: give a mapping of init_args, or null to remove it")
                cb["init_args"] = _merge(cb.get("init_args") or {}, value)
            else:
                _set_nested(cb.setdefault("init_args", {}), parts[2:], value)
        return
    _set_nested(config, parts, value)


def _set_nested(config: dict[str, Any], parts: list[str], value: Any) -> None:
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
