"""Print a markdown table of an MLflow experiment's runs: clean metrics beside robust ones, mean and spread over seeds.

    python experiments/studies/summarize.py pneumonia_adversarial [--tracking-uri sqlite:///mlflow.db]

Runs are grouped by run name with any ``_seed<k>`` suffix removed.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict

from mlflow import MlflowClient

from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri
from medrobust.lightning_modules.attacks.threat import Threat
from medrobust.lightning_modules.metrics.metric_names import parse_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--attacks", default="pgd20,autoattack", help="comma-separated attack names to show")
    args = parser.parse_args()
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment named {args.experiment!r}")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
    groups: dict[str, list] = defaultdict(list)
    for run in runs:
        groups[re.sub(r"_seed\d+$", "", run.info.run_name)].append(run)
    attacks = args.attacks.split(",")
    adv = {}
    for run in runs:
        for key in run.data.metrics:
            parsed = parse_name(key)
            headline = parsed and parsed[0] == "adv_attack" and parsed[1]["stat"] == "bal_acc"
            if headline and parsed[1]["attack"] in attacks:
                adv[key] = (parsed[1]["attack"], Threat.from_label(parsed[1]["threat"]))
    adv_keys = sorted(adv, key=adv.get)
    columns = ["test/bal_acc", "test/acc", "test/auroc", *adv_keys]  # balanced accuracy first, under attack too
    short = [c.replace("test/adv/", "").replace("/bal_acc", "").replace("test/", "") for c in columns]
    print("| run | seeds | " + " | ".join(short) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name, members in sorted(groups.items()):
        cells = []
        for column in columns:
            values = [m.data.metrics[column] for m in members if column in m.data.metrics]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        print(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
