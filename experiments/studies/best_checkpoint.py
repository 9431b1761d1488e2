"""Print the best checkpoint of a finished MLflow run, found by experiment and run name.

python -m medrobust.experiments.studies.best_checkpoint pneumonia_adversarial pgd_at_seed0
"""

from __future__ import annotations

import argparse

from mlflow import MlflowClient

from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("run_name")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment named {args.experiment!r}")
    runs = client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{args.run_name}'", order_by=["attributes.start_time DESC"]
    )
    tagged = [run for run in runs if "best_checkpoint" in run.data.tags]
    if not tagged:
        raise SystemExit(f"no run {args.run_name!r} with a best_checkpoint tag in {args.experiment!r}")
    print(tagged[0].data.tags["best_checkpoint"])


if __name__ == "__main__":
    main()
