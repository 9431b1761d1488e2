"""``medrobust report``: the trade-off table and figures of a sweep or an experiment, rebuilt from MLflow.

A report reads runs and writes only into its own run: the sweep's parent run, or the experiment's
``tradeoff_report`` run. Summaries come from what each run recorded at its test.
"""

from __future__ import annotations

import argparse
import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medrobust.experiments.reporting.tradeoff import METRICS, TAG_AXES, RunRow, format_table, row_from_run
from medrobust.experiments.reporting.tradeoff_record import log_report
from medrobust.experiments.sweeping.sweep_spec import SweepError
from medrobust.experiments.sweeping.sweep_store import child_runs, report_run, tested_runs
from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri
from medrobust.experiments.tracking.run_banner import run_banner
from medrobust.utilities.tracking_uri import redact_uri


def report_target(client: MlflowClient, target: str) -> tuple[str, list[RunRow], list[str]]:
    """Resolve a parent run id or an experiment name into (run to write to, rows, axes)."""
    try:
        parent = client.get_run(target)
    except MlflowException:
        parent = None
    if parent is not None:
        runs = [r for r in child_runs(client, parent.info.experiment_id, target) if r.info.status == "FINISHED"]
        if not runs:
            raise SweepError(f"run {target} has no FINISHED child runs to report on")
        axes = json.loads(parent.data.tags.get(TAG_AXES, "[]"))
        return target, [row_from_run(r) for r in runs], axes
    exp = client.get_experiment_by_name(target)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SweepError(f"{target!r} is neither a run id nor an experiment; experiments here: {names}")
    runs = tested_runs(client, exp.experiment_id)
    if not runs:
        raise SweepError(f"experiment {target!r} has no FINISHED runs with test metrics")
    rows = [row_from_run(r) for r in runs]
    axes = sorted({k for r in rows for k in r.values})
    return report_run(client, exp.experiment_id), rows, axes


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medrobust report",
        description="Rebuild the trade-off table and figures from MLflow: the children of a sweep's parent run, or "
        "every FINISHED tested run of an experiment (written into a run named tradeoff_report). Reads the runs; "
        "writes only into the report's own run.",
    )
    parser.add_argument("target", help="a parent run id, or an MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="bal_acc",
        help="what the figures and Pareto fronts compare (default: balanced accuracy; auto: balanced accuracy on "
        "imbalanced test labels, else accuracy)",
    )
    ns = parser.parse_args(argv)
    uri = resolve_tracking_uri(ns.tracking_uri)
    client = MlflowClient(uri)
    run_id, rows, axes = report_target(client, ns.target)
    print(_banner("reporting into", client, uri, run_id), flush=True)
    print(f"  {len(rows)} runs: " + ", ".join(f"{r.name} ({r.run_id[:8]})" for r in rows), flush=True)
    report = log_report(client, run_id, rows, axes, ns.metric)
    print(format_table(report))
    print(f"\nwritten to run {run_id} ({redact_uri(uri)}): tradeoff.json, tradeoff_table.json, plots/")
    print(_banner("report written into", client, uri, run_id))
    return 0


def _banner(event: str, client: MlflowClient, uri: str, run_id: str) -> str:
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    return run_banner(event, uri, experiment, run.info.experiment_id, run.info.run_name, run_id)
