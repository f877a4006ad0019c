"""The cross-validation command, its summary and pictures, fold ensembles, and the scratch recipe."""

import base64
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from busi.commands.cv import main as cv_main
from busi.commands.evaluate import main as evaluate_main
from busi.commands.predict import main as predict_main
from busi.evaluation.conformal import class_thresholds, set_name
from busi.evaluation.cross_validation import fold_dir, operating_point
from busi.model.classifier import load_classifier
from busi.training.run import run

from fake_busi import train_args


def test_scratch_recipe_trains_with_balanced_loss_cosine_schedule_and_stores_its_temperature(busi_root, tmp_path):
    cli = run(["--config", "scratch", *train_args(busi_root, tmp_path, epochs=4)[1:]])  # the recipe's weights
    model = cli.model
    assert (
        not model.settings.augmentation.enabled and model.hparams.tta and model.settings.optimizer.name == "adamw"
    )  # measured
    assert (
        model.model.segments and model.settings.loss.segmentation_weight == 0.5
    )  # measured: docs/experiments.md row 12
    counts = torch.tensor(list(cli.datamodule.split_counts()["train"].values()), dtype=torch.float32)
    assert torch.allclose(model.training_loss.class_weight, counts.sum() / (3 * counts))
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] < 0.02 * model.settings.optimizer.lr  # cosine decayed to ~0
    assert any(type(c).__name__ == "EarlyStopping" for c in cli.trainer.callbacks)
    report = json.loads((tmp_path / "lightning_logs/version_0/report.json").read_text())
    best = load_classifier(tmp_path / "lightning_logs/version_0/checkpoints/best.ckpt")
    assert float(best.temperature) == pytest.approx(report["temperature"]) and report["temperature"] != 1.0
    test = report["splits"]["test"]
    assert 0 <= test["ece"] <= 1 and 0 <= test["ece_uncalibrated"] <= 1
    assert {"benign", "malignant", "normal"} == set(test["segmentation"])


def test_operating_point_reports_the_argmax_decision_and_the_roc_point_at_80_percent_sensitivity():
    # 10 malignant (label 1), 10 others; p(malignant) ranks 9 of the 10 cancers above every other image
    p_malignant = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.55, 0.45, 0.4, 0.35, 0.3, 0.05] + [0.2] * 9 + [0.1])
    labels = torch.tensor([1] * 10 + [0] * 9 + [2])
    probabilities = torch.stack([(1 - p_malignant) * 0.6, p_malignant, (1 - p_malignant) * 0.4], dim=1)
    point = operating_point(probabilities, labels, positive=1)
    assert point["sensitivity"] == pytest.approx(0.7)  # argmax picks malignant where p > 0.6 (1 - p): 7 of 10
    assert point["specificity"] == 1.0
    assert point["specificity_at_target"] == 1.0 and point["threshold_at_target"] == pytest.approx(0.35)


@pytest.fixture(scope="module")
def cv_run(busi_root, tmp_path_factory) -> Path:
    """A real 3-fold cross-validation with the lesion decoder, one epoch per fold: its folder (the folds keep
    last.ckpt, so that a test can make one look interrupted)."""
    runs = tmp_path_factory.mktemp("cv")
    extra = ("--model.loss.segmentation_weight=1", "--resume.keep_when_finished=true", "--model.conformal_alpha=0.5")
    assert cv_main(["--folds", "3", *train_args(busi_root, runs, *extra, epochs=1)]) == 0
    return runs / "cv"


def test_cv_command_trains_every_fold_and_pools_the_out_of_fold_predictions(cv_run, busi_root, capsys):
    tmp_path = cv_run.parent
    args = ["--folds", "3", *train_args(busi_root, tmp_path, "--model.loss.segmentation_weight=1", epochs=1)]
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    images = json.loads((tmp_path / "cv/fold_0/lightning_logs/version_0/audit.json").read_text())["images"]
    assert len(summary["per_fold"]) == 3 and summary["out_of_fold"]["images"] == images
    assert sum(map(sum, summary["out_of_fold"]["confusion_matrix"])) == images
    assert sum(fold["images"] for fold in summary["per_fold"]) == images
    accuracies = [fold["accuracy"] for fold in summary["per_fold"]]
    assert summary["mean_sd"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 3)
    matrix, point = summary["out_of_fold"]["confusion_matrix"], summary["out_of_fold"]["operating_point"]
    assert point["sensitivity"] == pytest.approx(matrix[1][1] / sum(matrix[1]))  # malignant recall, pooled
    assert (tmp_path / "cv" / "cv_summary.txt").is_file() and list((tmp_path / "cv").glob("events.out.tfevents.*"))
    segmentation, folds = summary["mean_sd"]["segmentation"], summary["per_fold"]
    for name, key in (("benign", "dice"), ("malignant", "iou"), ("normal", "predicted_lesion_share")):
        values = [fold["segmentation"][name][key] for fold in folds]
        assert segmentation[name][key]["mean"] == pytest.approx(sum(values) / 3) and min(values) >= 0
    hits = [fold["localisation"]["malignant"]["pointing_hit"] for fold in folds]
    assert summary["mean_sd"]["localisation"]["malignant"]["pointing_hit"]["mean"] == pytest.approx(sum(hits) / 3)
    assert "Lesion segmentation, test folds" in (tmp_path / "cv" / "cv_summary.txt").read_text()
    seen = [fold["training"]["images_seen"] for fold in folds]  # one epoch: each fold's training images once
    train_images = [images - fold["images"] - folds[(fold["fold"] + 1) % 3]["images"] for fold in folds]
    assert seen == train_images and summary["mean_sd"]["images_seen"]["mean"] == pytest.approx(sum(seen) / 3)
    assert summary["mean_sd"]["wall_s_total"] == pytest.approx(sum(fold["training"]["wall_s"] for fold in folds))
    assert "images drawn per model" in (tmp_path / "cv" / "cv_summary.txt").read_text()
    assert cv_main(args) == 0  # a finished cross-validation is summarised again, not retrained
    output = capsys.readouterr().out
    assert "done before, kept" in output and "Pooled out-of-fold" in output
    for name in ("confusion_matrix.png", "reliability.png", "curves.png"):
        assert (tmp_path / "cv" / name).stat().st_size > 10_000, name
    assert sum(row["images"] for row in summary["out_of_fold"]["reliability"]) == images
    # prediction sets: each fold's own thresholds on its test fold, pooled; the ensemble's fitted on the pool
    pooled, covered = [], []
    for fold in range(3):
        run = tmp_path / f"cv/fold_{fold}/lightning_logs/version_0"
        thresholds = list(json.loads((run / "report.json").read_text())["conformal"]["thresholds"].values())
        validation = read_rows(run / "validation.csv")
        assert len(validation) == summary["per_fold"][(fold + 1) % 3]["images"]  # fold i validates on fold i+1
        for row in read_rows(run / "out_of_fold.csv"):
            p = [float(row[f"p_{n}"]) for n in ("benign", "malignant", "normal")]
            pooled.append((p, int(row["label"])))
            covered.append(p[int(row["label"])] >= thresholds[int(row["label"])] - 1e-9)
    sets = summary["out_of_fold"]["conformal"]
    assert sets["folds"]["coverage"] == pytest.approx(sum(covered) / len(covered))
    probabilities, labels = torch.tensor([p for p, _ in pooled]), torch.tensor([y for _, y in pooled])
    assert list(sets["ensemble_thresholds"].values()) == pytest.approx(class_thresholds(probabilities, labels, 0.5))
    assert "Prediction sets, pooled out-of-fold" in (tmp_path / "cv" / "cv_summary.txt").read_text()
    assert (tmp_path / "cv" / "risk_coverage.png").stat().st_size > 10_000

    # The fold models as an ensemble: busi-evaluate averages their calibrated probabilities.
    one = busi_root / "malignant" / "malignant (2).png"
    output = tmp_path / "ensemble"
    assert evaluate_main(["--ckpt", str(tmp_path / "cv"), "--data.root", str(busi_root), "--output", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["data"]["models"] == 3 and report["splits"]["test"]["samples"] == images
    assert "(each fold model's own temperature;" in (output / "report.txt").read_text()  # not "temperature 1"
    folds = []
    for fold in range(3):
        ckpt = tmp_path / f"cv/fold_{fold}/lightning_logs/version_0/checkpoints/best.ckpt"
        assert predict_main(["--ckpt", str(ckpt), str(one), "--output", str(tmp_path / f"one_{fold}.csv")]) == 0
        folds.append(read_rows(tmp_path / f"one_{fold}.csv")[0])
    ensemble = next(row for row in read_rows(output / "predictions.csv") if row["path"] == str(one))
    for column in ("p_benign", "p_malignant", "p_normal"):
        assert float(ensemble[column]) == pytest.approx(sum(float(row[column]) for row in folds) / 3, abs=1e-6)


def test_an_interrupted_fold_resumes_in_its_own_folder(cv_run, busi_root, tmp_path, capsys):
    cv_dir = tmp_path / "cv"
    shutil.copytree(cv_run, cv_dir)
    resumed, restarted = fold_dir(cv_dir, 1), fold_dir(cv_dir, 2)
    for name in ("out_of_fold.csv", "report.json"):  # killed after its last checkpoint, before the report
        (resumed / name).unlink()
    shutil.rmtree(restarted / "checkpoints")  # killed during its first epoch
    (restarted / "out_of_fold.csv").unlink()
    (cv_dir / "cv_summary.json").unlink()
    args = ["--folds", "3", *train_args(busi_root, tmp_path, "--model.loss.segmentation_weight=1", epochs=1)]
    assert cv_main(["--only_folds", "1", *args]) == 0  # a screen of one fold: the others wait, no summary yet
    output = capsys.readouterr().out
    assert "fold 1: interrupted, resumed" in output and "fold 2" not in output and "Folds 2 not trained" in output
    assert (resumed / "out_of_fold.csv").is_file() and not (cv_dir / "cv_summary.json").exists()
    assert cv_main(args) == 0
    output = capsys.readouterr().out
    assert "fold 1: done before, kept" in output and "fold 2: interrupted before its first checkpoint" in output
    for run_dir in (resumed, restarted):
        assert (run_dir / "out_of_fold.csv").is_file() and (run_dir / "report.json").is_file()
        assert [p.name for p in run_dir.parent.iterdir()] == ["version_0"]  # no version_1 beside it
    assert len(json.loads((cv_dir / "cv_summary.json").read_text())["per_fold"]) == 3


def read_rows(path):
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_and_the_app_take_a_cv_folder_as_a_fold_ensemble(cv_run, busi_root, tmp_path):
    cv_dir = cv_run
    one = busi_root / "malignant" / "malignant (2).png"
    folds = []
    for ckpt in sorted(cv_dir.glob("fold_*/lightning_logs/version_0/checkpoints/best.ckpt")):
        assert predict_main(["--ckpt", str(ckpt), str(one), "--output", str(tmp_path / "fold.csv")]) == 0
        folds.append(read_rows(tmp_path / "fold.csv")[0])
    cams = tmp_path / "cams"
    assert (
        predict_main(["--ckpt", str(cv_dir), str(one), "--output", str(tmp_path / "mean.csv"), "--cam", str(cams)]) == 0
    )
    (mean,) = read_rows(tmp_path / "mean.csv")
    for column in ("p_benign", "p_malignant", "p_normal"):
        assert float(mean[column]) == pytest.approx(sum(float(row[column]) for row in folds) / len(folds), abs=1e-6)
    thresholds = json.loads((cv_dir / "cv_summary.json").read_text())["out_of_fold"]["conformal"]["ensemble_thresholds"]
    members = [float(mean[f"p_{n}"]) >= t for n, t in thresholds.items()]  # the ensemble's sets, not a fold's
    assert mean["prediction_set"] == set_name(members, tuple(thresholds)) and mean["refer"] in ("yes", "no")
    assert len(list(cams.glob("*.png"))) == 1

    app = AppTest.from_file(
        str(Path(__file__).resolve().parents[1] / "busi" / "commands" / "app.py"), default_timeout=120
    )
    app.run()
    app.sidebar.text_input[0].set_value(str(cv_dir)).run()
    assert not app.exception and not app.error
    assert "Ensemble of 3 fold models" in [s.value for s in app.sidebar.subheader]
    assert any("3-fold cross-validation" in m.value for m in app.sidebar.markdown)


def test_the_service_answers_for_a_cv_folder_as_busi_predict_and_sends_its_lesion_masks(cv_run, busi_root, tmp_path):
    pytest.importorskip("litserve")
    import requests
    from PIL import Image

    from service import running_service

    images = [busi_root / "malignant" / "malignant (2).png", busi_root / "benign" / "benign (3).png"]
    output, masks = tmp_path / "ensemble.csv", tmp_path / "masks"
    assert predict_main(["--ckpt", str(cv_run), *map(str, images), "--output", str(output), "--masks", str(masks)]) == 0
    with running_service(cv_run) as service:
        card = requests.get(f"{service.url}/info", timeout=10).json()["model"]
        for path, row in zip(images, read_rows(output), strict=True):
            answer = requests.post(f"{service.url}/predict?mask=true", data=path.read_bytes(), timeout=60).json()
            assert answer["label"] == row["label"] and len(answer["model"]["sha256"]) == 3  # one per fold model
            for name, probability in answer["probabilities"].items():
                assert probability == pytest.approx(float(row[f"p_{name}"]), abs=1e-6)
            sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png_base64"]))))
            assert np.array_equal(sent, np.asarray(Image.open(row["mask"])))
            assert len(answer["lesions"]) == int(row["lesions"])  # measured as busi-predict measures
            if answer["lesions"]:
                assert answer["lesions"][0]["area_px"] == int(row["area_px"])
    assert (
        card["cross_validation"]["out_of_fold"] == json.loads((cv_run / "cv_summary.json").read_text())["out_of_fold"]
    )


def test_the_app_opens_the_newest_cross_validation_not_one_of_its_folds_and_says_why(cv_run, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(cv_run, runs / "tinycv")  # its fold checkpoints are the newest best.ckpt files there
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUSI_CHECKPOINT", raising=False)
    app = AppTest.from_file(
        str(Path(__file__).resolve().parents[1] / "busi" / "commands" / "app.py"), default_timeout=120
    )
    app.run()
    assert not app.exception and app.sidebar.text_input[0].value == str(Path("runs") / "tinycv")
    assert any("newest cross-validation under runs/" in c.value for c in app.sidebar.caption)
    assert "Ensemble of 3 fold models" in [s.value for s in app.sidebar.subheader]


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("kind", ["out_of_fold", "ensemble"])
def test_a_student_learns_from_a_cv_folder_read_without_running_code(cv_run, busi_root, tmp_path, kind, capsys):
    """`--distillation.teacher CV`: the training images' soft targets are the out-of-fold probabilities (as the
    folds wrote them) or the fold ensemble's; the fold checkpoints load with weights_only."""
    from busi.callbacks.distillation import Distillation, out_of_fold_probabilities
    from busi.commands.train import main

    def student(teacher: Path) -> list[str]:
        return train_args(
            busi_root, tmp_path, f"--distillation.teacher={teacher}", f"--distillation.targets={kind}", epochs=1
        )

    finished = run(student(cv_run))
    datamodule = finished.datamodule
    (distillation,) = [c for c in finished.trainer.callbacks if isinstance(c, Distillation)]
    soft_targets = distillation.soft_targets
    train = datamodule.dataset("train").indices
    catalog = datamodule.catalog
    assert set(soft_targets) == {catalog.digests[i] for i in train}
    assert all(abs(float(p.sum()) - 1) < 1e-5 for p in soft_targets.values())
    if kind == "out_of_fold":
        expected = torch.tensor(out_of_fold_probabilities(cv_run)[catalog.relative(train[0])])
        assert torch.allclose(soft_targets[catalog.digests[train[0]]].cpu(), expected)
        return
    evil = tmp_path / "evil_cv"
    shutil.copytree(cv_run, evil)
    ckpt = fold_dir(evil, 0) / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["extra"] = RunsCode(tmp_path / "pwned")
    torch.save(state, ckpt)
    capsys.readouterr()
    assert main(student(evil)) == 2
    assert "refused" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "pwned").exists()
