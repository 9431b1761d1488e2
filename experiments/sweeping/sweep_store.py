"""The MLflow side of sweeps and reports, in one place: a sweep's parent run, its children, an experiment's runs."""

from __future__ import annotations

from typing import Any

from medrobust.experiments.reporting.tradeoff import PARENT_TAG, TAG_ROLE, TAG_SWEEP

MAX_RUNS = 50000


def find_parent(client: Any, experiment_id: str, sweep_name: str) -> Any | None:
    """The parent run of the sweep named ``sweep_name`` (the first one, if a race made two)."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_SWEEP}` = '{sweep_name}'",
        order_by=["attributes.start_time ASC"],
    )
    return found[0] if found else None


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """Every child run of ``parent_id``, in start order."""
    return client.search_runs(
        [experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_id}'",
        max_results=MAX_RUNS,
        order_by=["attributes.start_time ASC"],
    )


def tested_runs(client: Any, experiment_id: str) -> list[Any]:
    """The FINISHED runs of an experiment that were tested, however they were made (sweep parents and report runs
    excluded), in start order."""
    runs = client.search_runs(
        [experiment_id], "attributes.status = 'FINISHED'", max_results=MAX_RUNS, order_by=["attributes.start_time ASC"]
    )
    return [r for r in runs if r.data.tags.get(TAG_ROLE) not in ("parent", "report") and "test/acc" in r.data.metrics]


def report_run(client: Any, experiment_id: str) -> str:
    """The experiment's ``tradeoff_report`` run, created FINISHED the first time."""
    found = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'report'")
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name="tradeoff_report", tags={TAG_ROLE: "report"})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
