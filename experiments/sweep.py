"""``medrobust sweep``: one parent MLflow run, one child run per point of a grid, each a full ``medrobust fit``.

A sweep file names base configs and what to vary::

    name: pneumonia_pgd_eps_cpu            # the parent run; relaunching finds it again by this name
    experiment: pneumonia_sweeps
    base: [../configs/sweeps/pneumonia_at_cpu.yaml]   # relative to the sweep file, merged in order
    overrides: {trainer.max_epochs: 6}    # every point (optional)
    grid:                                  # the Cartesian product, in this order
      callbacks.AdversarialTraining.eps: [0, 2/255, 4/255, 8/255]
      seed_everything: [0, 1]
    points: []                             # more points, each a mapping (optional)
    launcher: null                         # e.g. "torchrun --standalone --nproc_per_node=4" (default: this python)

Override keys are dotted paths into the config (``trainer.max_epochs``, ``data.batch_size``); ``callbacks.<Class>``
addresses the entry of ``trainer.callbacks`` with that class (``callbacks.AdversarialTraining.eps``), and a
``null`` value for ``callbacks.<Class>`` removes it.

The driver creates each child run itself (tag ``mlflow.parentRunId``) and hands its id to the child's config, so
every process of a multi-process child (Lightning DDP, torchrun, SLURM) writes to that one run. A child's last
checkpoint lives in ``<default_root_dir>/<experiment_id>/<run_id>/checkpoints``; a FAILED or killed child is resumed
from it in the same run. Children run one after another; for a cluster, create the runs once
(``--plan-only``) and give each array task its point (``--point $SLURM_ARRAY_TASK_ID``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.mlflow_logger import resolve_tracking_uri
from experiments.tradeoff import (
    PARENT_TAG,
    TAG_LABEL,
    TAG_POINT,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_VALUES,
    RunRow,
    display_value,
    format_table,
    log_report,
    row_from_run,
    short_key,
    sync_summaries,
)

SPEC_KEYS = {"name", "experiment", "base", "overrides", "grid", "points", "launcher", "args"}
TAG_HOST, TAG_PID, TAG_HEARTBEAT, TAG_ATTEMPT, TAG_AXES = (
    "sweep.host",
    "sweep.pid",
    "sweep.heartbeat",
    "sweep.attempt",
    "sweep.axes",
)
LOGGER_CLASS = "experiments.mlflow_logger.MLflowRunLogger"


class SweepError(ValueError):
    """A sweep file or a sweep's MLflow state that cannot be used; the message says what to change."""


# ------------------------------------------------------------------------------------------------- the file
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
        return points

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


def _merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge like jsonargparse merges ``--config`` files: mappings recursively, anything else replaced."""
    out = copy.deepcopy(into)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


# ----------------------------------------------------------------------------------------------- the driver
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"experiments" in cmdline.read_bytes()


class SweepRunner:
    """Creates or finds the parent run, then runs the points that are not FINISHED, one after another.

    Args:
        spec: the sweep.
        tracking_uri: MLflow store (default as everywhere: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).
        only: run just these point indices (array jobs).
        rerun_failed: rerun FAILED and KILLED children (resuming from their last checkpoint).
        stale_after: a RUNNING child whose driver on another host has not beaten its heartbeat for this many
            seconds is stale. On this host, a RUNNING child whose process is gone is stale at once.
        heartbeat: seconds between heartbeats.
        python: the command that runs ``-m experiments`` (default: this interpreter; a sweep's ``launcher`` wins).
        out: a stream for the progress display.
    """

    def __init__(
        self,
        spec: SweepSpec,
        tracking_uri: str | None = None,
        only: list[int] | None = None,
        rerun_failed: bool = True,
        stale_after: float = 600.0,
        heartbeat: float = 30.0,
        out: Any = None,
    ) -> None:
        self.spec = spec
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.points = spec.expand()
        if only is not None:
            bad = [i for i in only if not 0 <= i < len(self.points)]
            if bad:
                raise SweepError(f"--point {bad}: the sweep has points 0..{len(self.points) - 1}")
        self.only = only
        self.rerun_failed = rerun_failed
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.out = out or sys.stdout
        self.host = socket.gethostname()
        self.root = Path(str(spec.base_config().get("trainer", {}).get("default_root_dir") or "runs"))
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self._durations: list[float] = []

    # -------------------------------------------------------------------------------------------- display
    def say(self, text: str) -> None:
        print(f"[sweep {self.spec.name}] {text}", file=self.out, flush=True)

    @staticmethod
    def _status(children: dict[str, Any], point: Point) -> str:
        """The MLflow status of ``point``'s child run, or PENDING before it has one."""
        return children[point.key].info.status if point.key in children else "PENDING"

    def _status_line(self, children: dict[str, Any]) -> str:
        counts: dict[str, int] = {}
        for p in self.points:
            status = self._status(children, p)
            counts[status] = counts.get(status, 0) + 1
        return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))

    def plan(self, children: dict[str, Any] | None = None) -> str:
        if children is None:
            children = self.children() if self.parent_id else {}
        lines = [f"{len(self.points)} points, axes {self.spec.axes or '(none)'}"]
        for p in self.points:
            status = self._status(children, p)
            lines.append(f"  [{p.index:>3}] {status:<9} {p.label}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ MLflow state
    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.spec.experiment)
        if exp is None:
            return self.client.create_experiment(self.spec.experiment)
        if exp.lifecycle_stage != "active":
            raise SweepError(f"MLflow experiment {self.spec.experiment!r} is deleted; restore it or rename the sweep")
        return exp.experiment_id

    def find_parent(self) -> Any | None:
        self.experiment_id = self.experiment_id or self._experiment()
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_SWEEP}` = '{self.spec.name}'",
            order_by=["attributes.start_time ASC"],
        )
        return found[0] if found else None

    def ensure_parent(self) -> str:
        parent = self.find_parent()
        if parent is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.spec.name,
                tags={TAG_ROLE: "parent", TAG_SWEEP: self.spec.name, TAG_AXES: json.dumps(self.spec.axes)},
            )
            self.parent_id = run.info.run_id
            self.client.log_text(self.parent_id, self.spec.path.read_text(), "sweep.yaml")
            self.client.log_text(
                self.parent_id, yaml.safe_dump(self.spec.base_config(), sort_keys=False), "base_config.yaml"
            )
            params = {"sweep.points": len(self.points), "sweep.file": str(self.spec.path)}
            params |= {f"sweep.axis.{k}": json.dumps(v, default=str) for k, v in self.spec.grid.items()}
            for key, value in params.items():
                self.client.log_param(self.parent_id, key, str(value)[:6000])
            self.say(f"parent run {self.parent_id} in experiment {self.spec.experiment!r} ({self.tracking_uri})")
        else:
            self.parent_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
            self.client.set_tag(self.parent_id, TAG_AXES, json.dumps(self.spec.axes))
            self.say(f"continuing parent run {self.parent_id} in experiment {self.spec.experiment!r}")
        return self.parent_id

    def children(self) -> dict[str, Any]:
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
            max_results=50000,
            order_by=["attributes.start_time ASC"],
        )
        # If a point somehow has two runs, the newest stands for it.
        return {r.data.tags[TAG_POINT]: r for r in runs if TAG_POINT in r.data.tags}

    def mark_stale(self, children: dict[str, Any]) -> None:
        """A RUNNING child nobody runs any more becomes KILLED (and is then rerun like a FAILED one)."""
        now = time.time()
        for run in children.values():
            if run.info.status != "RUNNING":
                continue
            tags = run.data.tags
            if tags.get(TAG_HOST) == self.host and TAG_PID in tags:
                stale = not _pid_alive(int(tags[TAG_PID]))
                why = f"its process {tags[TAG_PID]} on this host is gone"
            else:
                beat = float(tags.get(TAG_HEARTBEAT, run.info.start_time / 1000))
                stale = now - beat > self.stale_after
                why = f"no heartbeat for {now - beat:.0f} s (> {self.stale_after:.0f} s)"
            if stale:
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.set_tag(run.info.run_id, "sweep.stale", why)
                self.say(f"child {tags.get(TAG_LABEL)} ({run.info.run_id}) was left RUNNING: {why}; marked KILLED")

    # ------------------------------------------------------------------------------------------------ children
    def child_config(self, point: Point, run_id: str) -> dict[str, Any]:
        config = self.spec.compose(point)
        trainer = config.setdefault("trainer", {})
        logger = trainer.get("logger") if isinstance(trainer.get("logger"), dict) else {}
        init_args = dict(logger.get("init_args") or {}) if logger.get("class_path") == LOGGER_CLASS else {}
        init_args |= {
            "experiment_name": self.spec.experiment,
            "run_name": point.label,
            "run_id": run_id,
            "tracking_uri": self.tracking_uri,
        }
        trainer["logger"] = {"class_path": LOGGER_CLASS, "init_args": init_args}
        config["test_after_fit"] = True
        return config

    def command(self, config_path: Path, ckpt: Path | None) -> list[str]:
        launcher = shlex.split(self.spec.launcher) if self.spec.launcher else [sys.executable]
        cmd = [*launcher, "-m", "experiments", "fit", "--config", str(config_path)]
        if ckpt is not None:
            cmd.append(f"--ckpt_path={ckpt}")
        return cmd + self.spec.args

    def last_checkpoint(self, config: dict[str, Any], run_id: str) -> Path | None:
        root = Path(str(config.get("trainer", {}).get("default_root_dir") or "runs"))
        dirpath = (config.get("checkpoint") or {}).get("dirpath")
        folder = Path(dirpath) if dirpath else root / str(self.experiment_id) / run_id / "checkpoints"
        found = sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def run_child(self, point: Point, existing: Any | None) -> str:
        if existing is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=point.label,
                tags={
                    PARENT_TAG: self.parent_id,
                    TAG_ROLE: "child",
                    TAG_SWEEP: self.spec.name,
                    TAG_POINT: point.key,
                    TAG_LABEL: point.label,
                    TAG_VALUES: json.dumps(point.values, default=str),
                },
            )
            run_id, attempt = run.info.run_id, 1
            for key, value in point.values.items():
                self.client.log_param(run_id, f"sweep.{key}", display_value(value)[:6000])
        else:
            run_id = existing.info.run_id
            attempt = int(existing.data.tags.get(TAG_ATTEMPT, "1")) + 1
            self.client.update_run(run_id, status="RUNNING")
        config = self.child_config(point, run_id)
        folder = self.root / "sweeps" / self.spec.name
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / f"{point.index:03d}_{point.key}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        ckpt = self.last_checkpoint(config, run_id) if existing is not None else None
        cmd = self.command(config_path, ckpt)
        self.say(f"$ {shlex.join(cmd)}")
        start = time.time()
        proc = subprocess.Popen(cmd)
        self.client.set_tag(run_id, TAG_HOST, self.host)
        self.client.set_tag(run_id, TAG_PID, str(proc.pid))
        self.client.set_tag(run_id, TAG_ATTEMPT, str(attempt))
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(run_id, stop), daemon=True)
        beat.start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            self._terminate_if_running(run_id, "KILLED")
            raise
        finally:
            stop.set()
            beat.join(timeout=5)
        self.client.set_tag(run_id, "sweep.returncode", str(code))
        status = self._terminate_if_running(run_id, "FAILED" if code else "FINISHED")
        self._durations.append(time.time() - start)
        return status

    def _beat(self, run_id: str, stop: threading.Event) -> None:
        while True:
            with contextlib.suppress(MlflowException):
                self.client.set_tag(run_id, TAG_HEARTBEAT, str(int(time.time())))
            if stop.wait(self.heartbeat):
                return

    def _terminate_if_running(self, run_id: str, status: str) -> str:
        run = self.client.get_run(run_id)
        if run.info.status == "RUNNING":
            self.client.set_terminated(run_id, status)
            return status
        return run.info.status

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        self.ensure_parent()
        self.mark_stale(self.children())
        children = self.children()
        self.say(self.plan(children))
        todo = [p for p in self.points if self.only is None or p.index in self.only]
        remaining = []
        for point in todo:
            status = self._status(children, point)
            if status == "FINISHED":
                continue
            if status == "RUNNING":
                self.say(f"point {point.index} ({point.label}) is running elsewhere; skipped")
                continue
            if status in ("FAILED", "KILLED") and not self.rerun_failed:
                continue
            remaining.append(point)
        try:
            for n, point in enumerate(remaining):
                eta = ""
                if self._durations:
                    left = (len(remaining) - n) * sum(self._durations) / len(self._durations)
                    eta = f", about {left / 60:.0f} min left"
                self.say(
                    f"point {point.index} ({point.label}): {n + 1} of {len(remaining)} to run this time{eta}; "
                    f"sweep so far: {self._status_line(children)}"
                )
                status = self.run_child(point, children.get(point.key))
                children = self.children()
                self.say(f"point {point.index} ({point.label}) {status} in {self._durations[-1] / 60:.1f} min")
                self.report(children)
        except KeyboardInterrupt:
            self.client.set_terminated(self.parent_id, "KILLED")
            self.say("interrupted; rerun the same command to continue")
            return 130
        children = self.children()
        report = self.report(children)
        statuses = [self._status(children, p) for p in self.points]
        if all(s == "FINISHED" for s in statuses):
            self.client.set_terminated(self.parent_id, "FINISHED")
        elif any(s in ("FAILED", "KILLED") for s in statuses) and self.only is None:
            self.client.set_terminated(self.parent_id, "FAILED")
        self.say(f"done: {self._status_line(children)}")
        if report is not None:
            print(format_table(report), file=self.out, flush=True)
            self.say(f"figures and tradeoff.json in run {self.parent_id} (artifacts plots/, tradeoff.json)")
        wanted = range(len(self.points)) if self.only is None else self.only
        return 0 if all(statuses[i] == "FINISHED" for i in wanted) else 1

    def report(self, children: dict[str, Any]) -> dict[str, Any] | None:
        done = [r for r in children.values() if r.info.status == "FINISHED"]
        if not done:
            return None
        sync_summaries(self.client, done)
        rows = [row_from_run(r) for r in done]
        return log_report(self.client, self.parent_id, rows, self.spec.axes)


# ------------------------------------------------------------------------------------------------- report
def report_target(client: MlflowClient, target: str) -> tuple[str, list[RunRow], list[str]]:
    """Resolve a parent run id or an experiment name into (run to write to, rows, axes)."""
    try:
        parent = client.get_run(target)
    except MlflowException:
        parent = None
    if parent is not None:
        exp = parent.info.experiment_id
        runs = client.search_runs(
            [exp], f"tags.`{PARENT_TAG}` = '{target}'", max_results=50000, order_by=["attributes.start_time ASC"]
        )
        runs = [r for r in runs if r.info.status == "FINISHED"]
        if not runs:
            raise SweepError(f"run {target} has no FINISHED child runs to report on")
        sync_summaries(client, runs)
        axes = json.loads(parent.data.tags.get(TAG_AXES, "[]"))
        return target, [row_from_run(r) for r in runs], axes
    exp = client.get_experiment_by_name(target)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SweepError(f"{target!r} is neither a run id nor an experiment; experiments here: {names}")
    runs = client.search_runs(
        [exp.experiment_id], "attributes.status = 'FINISHED'", max_results=50000, order_by=["attributes.start_time ASC"]
    )
    runs = [r for r in runs if r.data.tags.get(TAG_ROLE) not in ("parent", "report") and "test/acc" in r.data.metrics]
    if not runs:
        raise SweepError(f"experiment {target!r} has no FINISHED runs with test metrics")
    sync_summaries(client, runs)
    rows = [row_from_run(r) for r in runs]
    axes = sorted({k for r in rows for k in r.values})
    found = client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = 'report'")
    if found:
        report_id = found[0].info.run_id
    else:
        report_run = client.create_run(exp.experiment_id, run_name="tradeoff_report", tags={TAG_ROLE: "report"})
        report_id = report_run.info.run_id
        client.set_terminated(report_id, "FINISHED")
    return report_id, rows, axes


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medrobust report",
        description="Rebuild the trade-off table and figures from MLflow: the children of a sweep's parent run, or "
        "every FINISHED tested run of an experiment (written into a run named tradeoff_report).",
    )
    parser.add_argument("target", help="a parent run id, or an MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ns = parser.parse_args(argv)
    client = MlflowClient(resolve_tracking_uri(ns.tracking_uri))
    run_id, rows, axes = report_target(client, ns.target)
    report = log_report(client, run_id, rows, axes)
    print(format_table(report))
    print(f"\nwritten to run {run_id}: tradeoff.json, tradeoff_table.json, plots/")
    return 0


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medrobust sweep",
        description="Run a sweep file: a parent MLflow run and one child fit+test per point. Rerunning it skips "
        "FINISHED children and resumes FAILED, KILLED and stale ones in their own runs.",
    )
    parser.add_argument("file", help="a sweep YAML, e.g. experiments/sweeps/pneumonia_pgd_eps_cpu.yaml")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--point", type=int, action="append", help="run only this point index (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the points and child configs; touch nothing")
    parser.add_argument("--plan-only", action="store_true", help="create the parent run and stop (for array jobs)")
    parser.add_argument("--no-rerun-failed", action="store_true", help="leave FAILED and KILLED children alone")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=600.0,
        help="seconds without heartbeat before another host's RUNNING child counts as dead",
    )
    ns = parser.parse_args(argv)
    spec = SweepSpec.load(ns.file)
    if ns.dry_run:
        points = spec.expand()
        print(f"{spec.name}: {len(points)} points, axes {spec.axes}")
        for point in points:
            spec.compose(point)  # raises on a bad override
            print(f"  [{point.index:>3}] {point.label}")
        return 0
    runner = SweepRunner(
        spec, ns.tracking_uri, only=ns.point, rerun_failed=not ns.no_rerun_failed, stale_after=ns.stale_after
    )
    if ns.plan_only:
        runner.ensure_parent()
        runner.say(runner.plan())
        return 0
    return runner.run()
