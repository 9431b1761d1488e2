"""Write a trade-off report into one MLflow run: ``tradeoff.json``, the ``tradeoff_table.json`` table and the figures.

The report itself is built by :mod:`~medrobust.experiments.reporting.tradeoff` (reading only) and drawn by
:mod:`~medrobust.experiments.reporting.tradeoff_figures`; this module is the one that writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import matplotlib.pyplot as plt
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from medrobust.experiments.reporting.tradeoff import (
    SUMMARY,
    TABLE,
    RunRow,
    adv_threats,
    build_report,
    group_rows,
    is_seed_key,
    numeric_value,
)
from medrobust.experiments.reporting.tradeoff_figures import shift_figure, sweep_curves_figure, tradeoff_figure
from medrobust.experiments.tracking.tracking_server_away import TrackingServerAway


def log_report(
    client: MlflowClient, run_id: str, rows: Sequence[RunRow], axes: Sequence[str] = (), metric: str = "auto"
) -> dict:
    """Write ``tradeoff.json``, the ``tradeoff_table.json`` MLflow table and the figures into ``run_id`` (only)."""
    import pandas as pd

    report = build_report(rows, axes, metric)
    report["registered"] = registered = registered_labels(client, [r.run_id for r in rows])
    chosen = report["metric"]
    client.log_dict(run_id, report, "tradeoff.json")
    client.set_tag(run_id, "tradeoff.metric", chosen)
    if report["runs"]:
        # MLflow's table format, written whole: client.log_table would append to the previous report's rows.
        table = pd.DataFrame([{k: v for k, v in r.items() if k != "values"} for r in report["runs"]])
        client.log_text(run_id, table.to_json(orient="split", index=False), TABLE)
        logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if {"path": TABLE, "type": "table"} not in logged:
            logged.append({"path": TABLE, "type": "table"})
            client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged))
    groups = group_rows(rows)
    threats = adv_threats(rows, chosen)
    figures = {}
    if threats:
        figures["plots/tradeoff_adversarial.png"] = tradeoff_figure(groups, threats, chosen, registered)
    if any(SUMMARY + "shift_bal_acc" in r.summary for r in rows):
        figures["plots/tradeoff_shift.png"] = shift_figure(groups)
    numeric_axes = [
        a for a in axes if not is_seed_key(a) and all(numeric_value(g.values.get(a)) is not None for g in groups)
    ]
    if numeric_axes:
        fig = sweep_curves_figure(groups, numeric_axes[0], threats, chosen)
        if fig is not None:
            figures["plots/sweep_curves.png"] = fig
    for path, fig in figures.items():
        client.log_figure(run_id, fig, path)
        plt.close(fig)
    return report


def registered_labels(client: MlflowClient, run_ids: Sequence[str]) -> dict[str, str]:
    """``NAME vN @alias`` of the registered model versions made from each of ``run_ids`` (runs without one are
    left out; a store without a model registry gives none)."""
    labels: dict[str, list[str]] = {}
    aliases_of: dict[str, dict[str, list[str]]] = {}
    for start in range(0, len(run_ids), 100):
        quoted = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + 100])
        try:
            versions = client.search_model_versions(f"run_id IN ({quoted})")
        except TrackingServerAway:
            raise
        except MlflowException:  # a store without a model registry
            break
        for version in versions:  # search results carry no aliases: the registered model lists them
            if version.name not in aliases_of:
                by_version: dict[str, list[str]] = {}
                try:
                    found = client.get_registered_model(version.name).aliases or {}
                except TrackingServerAway:
                    raise
                except MlflowException:
                    found = {}
                for alias, number in sorted(found.items()):
                    by_version.setdefault(str(number), []).append(alias)
                aliases_of[version.name] = by_version
            aliases = "".join(f" @{alias}" for alias in aliases_of[version.name].get(str(version.version), []))
            labels.setdefault(version.run_id, []).append(f"{version.name} v{version.version}{aliases}")
    return {run_id: ", ".join(sorted(names)) for run_id, names in labels.items()}
