"""What every study script does around its own table: its command line, its MLflow store, the sweep's parent run,
and the table and figures it leaves there."""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
from mlflow import MlflowClient

from medrobust.datamodules.files import absolutize_env_paths
from medrobust.experiments.sweeping.sweep_store import child_runs, find_parent
from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri


def study_parser(doc: str | None) -> argparse.ArgumentParser:
    """``--tracking-uri`` and ``--report-only``; a script adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table from MLflow")
    return parser


def open_store(args: argparse.Namespace) -> tuple[str, MlflowClient]:
    """The tracking URI (relative MEDMNIST_ROOT / cache paths made absolute first) and a client on it."""
    absolutize_env_paths()
    uri = resolve_tracking_uri(args.tracking_uri)
    return uri, MlflowClient(uri)


def parent_run(client: MlflowClient, experiment: str, sweep_name: str) -> tuple[str, str]:
    """``(experiment id, parent run id)`` of the sweep named ``sweep_name``."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return experiment_id, find_parent(client, experiment_id, sweep_name).info.run_id


def selection_rules(client: MlflowClient, parent_id: str) -> dict[str, int]:
    """How many FINISHED children of the sweep selected their checkpoint by each rule (param ``checkpoint.rule``)."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    rules: dict[str, int] = {}
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status == "FINISHED":
            rule = run.data.params.get("checkpoint.rule", "?")
            rules[rule] = rules.get(rule, 0) + 1
    return rules


def publish(client: MlflowClient, run_id: str, name: str, payload: dict, figures: dict[str, plt.Figure]) -> None:
    """``name`` (JSON) and each figure under its artifact path, into the parent run, with the checkpoint-selection
    rule of its children (``checkpoint_selection``; printed, and flagged when the arms were selected differently)."""
    rules = selection_rules(client, run_id)
    payload = payload | {"checkpoint_selection": rules}
    if len(rules) > 1:
        print(f"WARNING: the arms selected checkpoints by different rules {rules}: the comparison mixes them")
    else:
        print(f"checkpoint selection: {next(iter(rules), '-')} (every arm)")
    client.log_dict(run_id, payload, name)
    for path, fig in figures.items():
        client.log_figure(run_id, fig, path)
        plt.close(fig)
    print(f"parent run {run_id}")
