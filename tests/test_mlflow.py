"""Runs logged to MLflow's local SQLite store (no server), read back with MlflowClient: every epoch's
metrics, and the report's files as artifacts; busi-cv's summary as a run with the folds nested under it."""

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from busi.commands.cv import main as cv_main
from busi.training.run import run

from fake_busi import train_args

REPO = Path(__file__).resolve().parents[1]
REPORT_FILES = {"report.json", "report.txt", "confusion_matrix.png", "reliability.png", "curves.png"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_the_mlflow_recipe_logs_metrics_and_the_report_files(busi_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's store is sqlite:///mlflow.db, its artifacts ./mlruns
    finished = run(train_args(busi_root, tmp_path / "runs", "--config", str(REPO / "configs/mlflow.yaml"), epochs=2))
    assert finished.run_dir == tmp_path / "runs" / "lightning_logs" / "version_0"  # TensorBoard's, as always
    assert any(finished.run_dir.glob("events.out.tfevents.*"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (logged,) = runs_of(uri, "busi")
    client = MlflowClient(tracking_uri=uri)
    assert len(client.get_metric_history(logged.info.run_id, "val/macro_f1")) == 2
    assert logged.data.metrics["report/test_accuracy"] == pytest.approx(finished.report["splits"]["test"]["accuracy"])
    artifacts = {item.path for item in client.list_artifacts(logged.info.run_id)}
    assert artifacts >= REPORT_FILES
    copy = Path(client.download_artifacts(logged.info.run_id, "report.json", str(tmp_path / "downloaded")))
    assert json.loads(copy.read_text()) == finished.report


def test_cross_validation_logs_its_summary_with_the_fold_runs_under_it(busi_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'cv.db'}"
    args = train_args(busi_root, tmp_path, epochs=1)
    args += ["--trainer.logger=MLFlowLogger", f"--trainer.logger.tracking_uri={uri}"]  # the shortest form
    assert cv_main(["--folds", "3", "--name", "cv", *args]) == 0
    logged = runs_of(uri, "lightning_logs")
    (summary,) = [r for r in logged if r.info.run_name == "cv (cross-validation)"]
    folds = [r for r in logged if r is not summary]
    assert len(folds) == 3 and all(r.data.tags["mlflow.parentRunId"] == summary.info.run_id for r in folds)
    client = MlflowClient(tracking_uri=uri)
    assert len(client.get_metric_history(summary.info.run_id, "cv/accuracy")) == 3
    artifacts = {item.path for item in client.list_artifacts(summary.info.run_id)}
    assert {"cv_summary.json", "cv_summary.txt", "confusion_matrix.png", "reliability.png", "curves.png"} <= artifacts
