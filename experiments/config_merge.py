"""Merging config files: mappings recursively, and ``trainer.callbacks`` by class rather than wholesale.

jsonargparse replaces a list when a later ``--config`` sets it, so a second config that adds one callback would drop
every callback of the first. Both ``medrobust fit --config a.yaml --config b.yaml`` and a sweep's ``base:`` list merge
instead: an entry of a later file whose class is already listed updates that entry's ``init_args``; a new class is
appended. To drop a callback, use a sweep override ``callbacks.<Class>: null``, or write the whole list in one file.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

#: the settings every run starts from (trainer, model and data defaults, the checkpoint rule); a run's config holds
#: only what differs. Logged into every run like the rest of the resolved config.
BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"


def class_name(entry: Any) -> str:
    """``medrobust.callbacks.AdversarialTraining`` -> ``AdversarialTraining`` (also for a bare class path string)."""
    path = entry.get("class_path", "") if isinstance(entry, dict) else str(entry)
    return str(path).rsplit(".", 1)[-1]


def merge_configs(into: dict[str, Any], update: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``update`` merged into a copy of ``into``: mappings recursively, ``trainer.callbacks`` by class, anything else
    replaced."""
    out = copy.deepcopy(into)
    for key, value in update.items():
        here = (*path, key)
        if here == ("trainer", "callbacks") and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = merge_callbacks(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_callbacks(first: list[Any], later: list[Any]) -> list[Any]:
    out = copy.deepcopy(first)
    for entry in later:
        same = [i for i, have in enumerate(out) if class_name(have) == class_name(entry)]
        if same and isinstance(entry, dict):
            target = out[same[0]] if isinstance(out[same[0]], dict) else {"class_path": out[same[0]]}
            target["init_args"] = merge_configs(target.get("init_args") or {}, entry.get("init_args") or {})
            out[same[0]] = target
        else:
            out.append(copy.deepcopy(entry))
    return out


def merge_config_args(argv: list[str]) -> list[str]:
    """Replace several ``--config`` files that each list ``trainer.callbacks`` by one merged file (at the last one's
    place, so options after it still win). Other arguments are left as they are."""
    positions, files = [], []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            positions.append((i, 2))
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            positions.append((i, 1))
            files.append(arg.split("=", 1)[1])
    if len(files) < 2:
        return argv
    try:
        configs = [yaml.safe_load(Path(f).read_text()) or {} for f in files]
    except (OSError, yaml.YAMLError):
        return argv  # LightningCLI reports the file itself
    if sum(bool((c.get("trainer") or {}).get("callbacks")) for c in configs if isinstance(c, dict)) < 2:
        return argv
    merged: dict[str, Any] = {}
    for config in configs:
        merged = merge_configs(merged, config)
    folder = tempfile.mkdtemp(prefix="medrobust-config-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = os.path.join(folder, "merged.yaml")
    Path(target).write_text(yaml.safe_dump(merged, sort_keys=False))
    drop = {i + k for i, n in positions for k in range(n)}
    last = positions[-1][0]
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i == last:
            out += ["--config", target]
        if i not in drop:
            out.append(arg)
    return out
