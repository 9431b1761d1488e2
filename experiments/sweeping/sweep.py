"""``medrobust sweep``: one parent MLflow run, one child run per point of a sweep file, each a full ``medrobust fit``.

The sweep file (:mod:`medrobust.experiments.sweeping.sweep_spec`) says what to vary;
:class:`~medrobust.experiments.sweeping.sweep_runner.SweepRunner`
runs the points; :mod:`medrobust.experiments.reporting.report` rebuilds the report from MLflow at any time.
"""

from __future__ import annotations

import argparse

from medrobust.experiments.sweeping.sweep_runner import SweepRunner
from medrobust.experiments.sweeping.sweep_spec import SweepSpec


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
