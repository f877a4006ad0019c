"""Show what a run logged to MLflow: `python -m benchmarks.mlflow_listing [--tracking_uri sqlite:///mlflow.db]
[--experiment busi]` prints the newest run's metrics (how many values each, the last one) and artifacts."""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking_uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="busi")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    print(f"run {run.info.run_id} ({run.info.run_name}, {run.info.status})")
    for key in sorted(run.data.metrics):
        history = client.get_metric_history(run.info.run_id, key)
        print(f"  {key:40s} {len(history)} value(s), last {history[-1].value:.4f}")
    print("artifacts:", ", ".join(sorted(item.path for item in client.list_artifacts(run.info.run_id))))


if __name__ == "__main__":
    main()
