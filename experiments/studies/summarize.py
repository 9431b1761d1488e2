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
    adv_keys = sorted(
        {
            k
            for run in runs
            for k in run.data.metrics
            if k.startswith("test/adv/") and k.endswith("/acc") and k.split("/")[2] in attacks
        },
        key=lambda k: (k.split("/")[2], float(k.split("/")[3].split("_")[1]) / 255 if "_255" in k else 0.0),
    )
    columns = ["test/acc", "test/bal_acc", "test/auroc", *adv_keys]
    short = [c.replace("test/adv/", "").replace("/acc", "").replace("test/", "") for c in columns]
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
