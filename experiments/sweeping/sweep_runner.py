"""SweepRunner: runs a sweep's points as child runs of one parent MLflow run, one after another, resumably.

The driver creates each child run itself (tag ``mlflow.parentRunId``) and hands its id to the child's config, so
every process of a multi-process child (Lightning DDP, torchrun, SLURM) writes to that one run. A child's last
checkpoint lives in ``<default_root_dir>/<experiment_id>/<run_id>/checkpoints``; a FAILED or killed child is resumed
from it in the same run. For a cluster, create the runs once (``--plan-only``) and give each array task its point
(``--point $SLURM_ARRAY_TASK_ID``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medrobust.experiments.config_merge import BASE_CONFIG
from medrobust.experiments.legacy_class_paths import new_class_path
from medrobust.experiments.reporting.tradeoff import (
    PARENT_TAG,
    TAG_AXES,
    TAG_LABEL,
    TAG_POINT,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_VALUES,
    display_value,
    format_table,
    row_from_run,
)
from medrobust.experiments.reporting.tradeoff_record import log_report
from medrobust.experiments.resume import is_complete
from medrobust.experiments.sweeping.sweep_spec import Point, SweepError, SweepSpec
from medrobust.experiments.sweeping.sweep_store import child_runs, find_parent
from medrobust.experiments.tracking.mlflow_logger import ensure_experiment, experiment_url, resolve_tracking_uri
from medrobust.experiments.tracking.run_banner import run_banner
from medrobust.utilities.processes import host, pid_alive
from medrobust.utilities.tracking_uri import has_credentials, redact_uri

TAG_HOST, TAG_PID, TAG_HEARTBEAT, TAG_ATTEMPT = "sweep.host", "sweep.pid", "sweep.heartbeat", "sweep.attempt"
#: the MD5 of the config a child was composed from: a relaunch never counts a child run with another config as done
TAG_CONFIG = "sweep.config_md5"
#: composed-config settings that change no result, left out of that MD5 (moving the runs folder is no new protocol)
NOT_PROTOCOL = (
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.root",
    "data.cache_dir",
    "data.download",
    "data.num_workers",
    "data.eval_batch_size",
    "system_metrics",
)
LOGGER_CLASS = "medrobust.experiments.tracking.mlflow_logger.MLflowRunLogger"


def logger_settings(logger: dict[str, Any]) -> dict[str, Any]:
    """The ``init_args`` of a config's logger that a sweep child keeps (tags, artifact location, ...): those of
    MLflowRunLogger, named by its path, its pre-namespace path, or not at all (the command's default logger)."""
    class_path = logger.get("class_path")
    ours = class_path in (None, LOGGER_CLASS) or new_class_path(class_path) == LOGGER_CLASS
    return dict(logger.get("init_args") or {}) if ours else {}


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
        python: the command that runs ``-m medrobust.experiments`` (default: this interpreter; a sweep's ``launcher``
        wins).
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
        self.tracking_uri = resolve_tracking_uri(tracking_uri)  # may hold credentials: never written anywhere
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
        self.host = host()
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
    def find_parent(self) -> Any | None:
        self.experiment_id = self.experiment_id or ensure_experiment(self.client, self.spec.experiment)
        return find_parent(self.client, self.experiment_id, self.spec.name)

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
            self.say(self.banner("started parent"))
        else:
            self.parent_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
            self.client.set_tag(self.parent_id, TAG_AXES, json.dumps(self.spec.axes))
            self.say(self.banner("continuing parent"))
        return self.parent_id

    def banner(self, event: str) -> str:
        """The parent run's experiment, name, id and UI link."""
        return run_banner(
            event, self.tracking_uri, self.spec.experiment, str(self.experiment_id), self.spec.name, str(self.parent_id)
        )

    def children(self) -> dict[str, Any]:
        """The point key -> child run; if a point somehow has two runs, the newest stands for it."""
        runs = child_runs(self.client, self.experiment_id, self.parent_id)
        return {r.data.tags[TAG_POINT]: r for r in runs if TAG_POINT in r.data.tags}

    def mark_stale(self, children: dict[str, Any]) -> None:
        """A RUNNING child nobody runs any more becomes KILLED (and is then rerun like a FAILED one)."""
        now = time.time()
        for run in children.values():
            if run.info.status != "RUNNING":
                continue
            tags = run.data.tags
            if tags.get(TAG_HOST) == self.host and TAG_PID in tags:
                stale = not pid_alive(int(tags[TAG_PID]))
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
        init_args = logger_settings(logger)
        # A URI with credentials stays out of the file; the child reads it from $MLFLOW_TRACKING_URI.
        uri = None if has_credentials(self.tracking_uri) else self.tracking_uri
        init_args |= {"experiment_name": self.spec.experiment, "run_name": point.label, "run_id": run_id}
        init_args["tracking_uri"] = uri
        trainer["logger"] = {"class_path": LOGGER_CLASS, "init_args": init_args}
        config["test_after_fit"] = True
        return config

    def command(self, config_path: Path, ckpt: Path | None) -> list[str]:
        launcher = shlex.split(self.spec.launcher) if self.spec.launcher else [sys.executable]
        cmd = [*launcher, "-m", "medrobust.experiments", "fit", "--config", str(config_path)]
        if ckpt is not None:
            cmd.append(f"--ckpt_path={ckpt}")
        return cmd + self.spec.args

    def last_checkpoint(self, config: dict[str, Any], run_id: str) -> Path | None:
        root = Path(str(config.get("trainer", {}).get("default_root_dir") or "runs"))
        dirpath = (config.get("checkpoint") or {}).get("dirpath")
        folder = Path(dirpath) if dirpath else root / str(self.experiment_id) / run_id / "checkpoints"
        found = sorted((p for p in folder.glob("last*.ckpt") if is_complete(p)), key=lambda p: p.stat().st_mtime)
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
                    TAG_CONFIG: self.config_digest(point),
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
        proc = subprocess.Popen(cmd, env=os.environ | {"MLFLOW_TRACKING_URI": self.tracking_uri})
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

    def config_digest(self, point: Point) -> str:
        """MD5 of what decides the point's result, as a child records it: its composed config (base configs,
        overrides, its values) without the settings that change no number (:data:`NOT_PROTOCOL`: where runs and data
        live, logging, workers, evaluation batch size), the command's default config file
        (``experiments/configs/base.yaml``) and the extra arguments every child gets (``args``)."""
        config = copy.deepcopy(self.spec.compose(point))
        for dotted in NOT_PROTOCOL:
            *parents, last = dotted.split(".")
            node = config
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)
        base = BASE_CONFIG.read_text() if BASE_CONFIG.is_file() else ""
        text = json.dumps({"config": config, "base": base, "args": self.spec.args}, sort_keys=True, default=str)
        return hashlib.md5(text.encode()).hexdigest()

    def check_same_configs(self, children: dict[str, Any]) -> None:
        """Refuse to go on with a parent whose children ran other configs than the sweep file now composes (a base
        config or an override changed since): a relaunch would count their results as this protocol's."""
        changed = [
            p.label
            for p in self.points
            if p.key in children and children[p.key].data.tags.get(TAG_CONFIG) != self.config_digest(p)
        ]
        keys = {p.key for p in self.points}
        changed += [  # children of points the file no longer lists: the report would still count them
            f"{run.data.tags.get(TAG_LABEL, key)} (no longer in the file)"
            for key, run in children.items()
            if key not in keys
        ]
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise SweepError(
                f"sweep {self.spec.name!r} (parent run {self.parent_id}) has children run with other configs than "
                f"the sweep file composes now ({shown}; changed base configs or overrides, or made before "
                f"medrobust recorded {TAG_CONFIG}): continuing would mix two protocols in one table. Give the sweep a "
                "new name: (a new parent run), or restore the configs it ran with"
            )

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        self.ensure_parent()
        self.mark_stale(self.children())
        children = self.children()
        self.check_same_configs(children)
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
            self.say(self.banner("interrupted (KILLED)"))
            self.say("rerun the same command to continue")
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
            if self.tracking_uri.startswith(("http://", "https://")):
                self.say(f"runs table: {experiment_url(redact_uri(self.tracking_uri), self.experiment_id)}")
        self.say(self.banner(f"{self.client.get_run(self.parent_id).info.status} parent"))
        wanted = range(len(self.points)) if self.only is None else self.only
        return 0 if all(statuses[i] == "FINISHED" for i in wanted) else 1

    def report(self, children: dict[str, Any]) -> dict[str, Any] | None:
        """The trade-off report of the FINISHED children, written into the parent run (only)."""
        done = [r for r in children.values() if r.info.status == "FINISHED"]
        if not done:
            return None
        rows = [row_from_run(r) for r in done]
        return log_report(self.client, self.parent_id, rows, self.spec.axes, self.spec.metric)
