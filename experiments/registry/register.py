"""``medrobust register``: pick one run of a sweep (or an experiment) by a rule written in the command, register its
logged model under a name, and point an alias at the new version.

    medrobust register <parent run id | experiment> --name pneumonia_robust \\
        --select "max summary/robust_bal_acc_worst if summary/clean_bal_acc >= best - 0.02"

Each seed's run is its own model: the rule compares runs, not seed means, so picking the best of several seeds
favours a lucky seed (read the sweep's report, with its intervals, before registering).
"""

from __future__ import annotations

import argparse
import json
import re

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medrobust.experiments.registry.selection_rule import SYNTAX, SelectionRule
from medrobust.experiments.sweeping.sweep_store import child_runs, tested_runs
from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri
from medrobust.utilities.errors import InputError
from medrobust.utilities.mlflow_source import MODEL_ID_TAG
from medrobust.utilities.tracking_uri import redact_uri

#: what runs compared by one rule must share: the data they were trained and tested on
SAME_DATA = ("data.flag", "data.size", "data.md5")


def candidate_runs(client: MlflowClient, target: str) -> list:
    """The FINISHED children of the parent run ``target``, or the FINISHED tested runs of the experiment ``target``."""
    try:
        parent = client.get_run(target)
    except MlflowException:
        parent = None
    if parent is not None:
        return [r for r in child_runs(client, parent.info.experiment_id, target) if r.info.status == "FINISHED"]
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        raise InputError(f"{target!r} is neither a run id nor an experiment name")
    return tested_runs(client, experiment.experiment_id)


def register(client: MlflowClient, target: str, name: str, rule: SelectionRule, alias: str) -> dict:
    """Register the model of the run ``rule`` picks among ``target``'s runs; returns what was done."""
    runs = candidate_runs(client, target)
    with_model = {r.info.run_id: r for r in runs if r.data.tags.get(MODEL_ID_TAG)}
    if not with_model:
        raise InputError(
            f"none of the {len(runs)} FINISHED runs of {target!r} has a logged model (tag {MODEL_ID_TAG}): runs made "
            "before models were logged, or with --mlflow_model.log_model false"
        )
    datasets = {tuple(r.data.tags.get(k) for k in SAME_DATA) for r in with_model.values()}
    if len(datasets) > 1:
        found = sorted(map(str, datasets))
        raise InputError(
            f"the runs of {target!r} were trained on different data ({', '.join(SAME_DATA)}: {found}): their metrics "
            "are not comparable; register from one sweep's parent run"
        )
    run_id, values = rule.choose({k: dict(r.data.metrics) for k, r in with_model.items()})
    model_id = with_model[run_id].data.tags[MODEL_ID_TAG]
    tags = {"select.rule": rule.text, "select.values": json.dumps(values), "select.target": target}
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(client.tracking_uri):  # MLflow's own registration also links the version to the model
        version = mlflow.register_model(f"models:/{model_id}", name, await_registration_for=60, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    client.set_tag(run_id, f"registered.{name}", f"version {version.version} @{alias}")
    return {"run": with_model[run_id], "model_id": model_id, "version": version.version, "values": values}


def register_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medrobust register", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a sweep's parent run id, or an MLflow experiment name")
    parser.add_argument("--name", required=True, help="the registered model's name (created if new)")
    parser.add_argument("--select", required=True, help=f"the rule: {SYNTAX}")
    parser.add_argument("--alias", default="champion", help="the alias set on the new version (default: champion)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ns = parser.parse_args(argv)
    rule = SelectionRule.parse(ns.select)  # a bad rule or alias is refused before the store is read
    if re.fullmatch(r"(?i)latest|v\d+", ns.alias) or not re.fullmatch(r"[\w-]+", ns.alias):
        raise InputError(
            f"--alias {ns.alias!r}: MLflow reserves 'latest' and 'v<number>'; use letters, digits, - and _"
        )
    uri = resolve_tracking_uri(ns.tracking_uri)
    done = register(MlflowClient(uri), ns.target, ns.name, rule, ns.alias)
    run = done["run"]
    compared = ", ".join(f"{k} {v:.4g}" for k, v in done["values"].items())
    print(f"medrobust: rule {rule.text!r} picked run {run.info.run_name!r} (id {run.info.run_id}): {compared}")
    print(
        f"medrobust: registered models:/{ns.name}/{done['version']} (models:/{ns.name}@{ns.alias}) from model "
        f"{done['model_id']} in {redact_uri(uri)}"
    )
    print(f"medrobust: `medrobust report {ns.target}` draws the trade-off figure with this point marked")
    return 0
