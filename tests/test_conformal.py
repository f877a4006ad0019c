"""Prediction sets: the coverage promise on scores of known distribution, the thresholds of a trained model
kept in best.ckpt, busi-predict's prediction_set and refer columns from them, the report's entries and the
app showing the set."""

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from busi.commands.predict import main as predict_main
from busi.evaluation.conformal import (
    class_thresholds,
    prediction_sets,
    refers,
    risk_coverage,
    set_name,
    set_report,
)

NAMES = ("benign", "malignant", "normal")


def scores(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` scans per class: noisy logits leaning to the true class, softmaxed (classes of unequal difficulty)."""
    labels = torch.arange(3).repeat_interleave(count)
    logits = torch.randn(3 * count, 3, generator=generator) * torch.tensor([1.0, 1.5, 2.5])
    logits[torch.arange(3 * count), labels] += 1.5
    return logits.softmax(dim=1), labels


def test_each_class_is_covered_within_sampling_error_of_one_minus_alpha_over_many_draws():
    generator = torch.Generator().manual_seed(0)
    alpha, calibration, test, draws = 0.1, 40, 400, 300
    coverage = torch.zeros(draws, 3, dtype=torch.float64)
    for draw in range(draws):
        thresholds = class_thresholds(*scores(calibration, generator), alpha)
        probabilities, labels = scores(test, generator)
        covered = prediction_sets(probabilities, thresholds)[torch.arange(len(labels)), labels]
        coverage[draw] = torch.stack([covered[labels == k].double().mean() for k in range(3)])
    mean, error = coverage.mean(dim=0), coverage.std(dim=0) / draws**0.5
    # split conformal: 1 − α ≤ E[coverage] ≤ 1 − α + 1/(n + 1) for n calibration scans of the class
    assert (mean >= 1 - alpha - 3 * error).all(), mean
    assert (mean <= 1 - alpha + 1 / (calibration + 1) + 3 * error).all(), mean


def test_too_few_calibration_scans_put_the_class_in_every_set():
    probabilities = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    labels = torch.tensor([0, 0, 1])
    # α 0.1 needs n ≥ 9 scans of a class: with 2 and 1 (and 0) every class is in every set
    assert class_thresholds(probabilities, labels, 0.1) == [0.0, 0.0, 0.0]
    # α 0.5: class 0's two scores 0.1, 0.2 → rank ⌈3 · 0.5⌉ = 2 → threshold 1 − 0.2 = 0.8
    assert class_thresholds(probabilities, labels, 0.5)[0] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="conformal_alpha 1"):
        class_thresholds(probabilities, labels, 1.0)


def test_the_set_report_counts_by_hand():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.45, 0.45, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 2, 0])
    thresholds = [0.4, 0.4, 0.5]  # sets: {b}, {b, m}, {n}, {}
    sets = prediction_sets(probabilities, thresholds)
    assert [set_name(row, NAMES) for row in sets.tolist()] == ["benign", "benign|malignant", "normal", "none"]
    report = set_report(probabilities, labels, thresholds, NAMES)
    assert report["coverage"] == 0.75 and report["coverage_per_class"] == {
        "benign": 0.5,
        "malignant": 1.0,
        "normal": 1.0,
    }
    assert report["mean_set_size"] == 1.0 and report["set_sizes"] == {"0": 1, "1": 2, "2": 1, "3": 0}
    assert report["referred"] == 0.5 and report["accuracy_answered"] == 1.0
    # one class, but not the most probable one: referred too
    assert refers(torch.tensor([[False, True, False]]), torch.tensor([0])).tolist() == [True]
    assert refers(torch.tensor([[False, True, False]]), torch.tensor([1])).tolist() == [False]
    curve = risk_coverage(probabilities, labels)
    assert [round(p["coverage"], 2) for p in curve] == [0.25, 0.5, 0.75, 1.0]
    assert curve[0]["accuracy"] == 1.0 and curve[-1]["accuracy"] == 0.5  # argmax right on scans 1 and 3 only


def test_a_trained_model_keeps_its_thresholds_and_busi_predict_answers_with_sets(conformal_run, busi_root, tmp_path):
    report = json.loads((conformal_run / "report.json").read_text())
    sets = report["conformal"]
    assert sets["alpha"] == 0.5 and sum(sets["calibration_images"].values()) == report["splits"]["val"]["samples"]
    assert sets["test"]["images"] == report["splits"]["test"]["samples"]
    assert "Prediction sets (test split; miscoverage 0.5" in (conformal_run / "report.txt").read_text()
    assert (conformal_run / "risk_coverage.png").stat().st_size > 10_000
    ckpt = conformal_run / "checkpoints" / "best.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["busi_summary"]["conformal"]
    assert stored["thresholds"] == sets["thresholds"]
    output = tmp_path / "p.csv"
    assert predict_main(["--ckpt", str(ckpt), str(busi_root), "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open()))
    thresholds = [sets["thresholds"][n] for n in NAMES]
    for row in rows:
        if row["error"]:
            assert row["prediction_set"] == row["refer"] == ""
            continue
        members = [float(row[f"p_{n}"]) >= t - 1e-6 for n, t in zip(NAMES, thresholds, strict=True)]
        assert row["prediction_set"] == set_name(members, NAMES)
        alone = members == [n == row["label"] for n in NAMES]  # the label's class, and no other
        assert row["refer"] == ("no" if alone else "yes")
    # the test split's coverage in the report is what these columns give on its images
    test = {r["path"]: r["label"] for r in csv.DictReader((conformal_run / "split.csv").open()) if r["split"] == "test"}
    answers = {str(Path(r["path"]).relative_to(busi_root)): r["prediction_set"].split("|") for r in rows}
    assert len(test) == sets["test"]["images"]
    covered = [label in answers[path] for path, label in test.items()]
    assert sum(covered) / len(covered) == pytest.approx(sets["test"]["coverage"])


def test_the_app_shows_the_set_and_says_refer(conformal_run, busi_root, monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUSI_CHECKPOINT", raising=False)
    app = AppTest.from_file(str(Path(__file__).parents[1] / "busi" / "commands" / "app.py"), default_timeout=120)
    app.run()
    app.sidebar.text_input[0].set_value(str(conformal_run / "checkpoints" / "best.ckpt")).run()
    assert any("Prediction sets:" in c.value for c in app.sidebar.caption)
    scans = [p for p in sorted(busi_root.rglob("*.png")) if "_mask" not in p.name][:4]
    app.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/png") for p in scans]).run()
    assert not app.exception
    shown = [m.value for m in [*app.main.success, *app.main.warning] if "Prediction set" in m.value]
    assert len(shown) == len(scans)
    referred = [m for m in shown if "refer" in m]
    assert all("unsure" in m for m in referred) and all(" only" in m for m in shown if m not in referred)


def test_a_calibration_split_fits_the_temperature_and_the_sets_and_never_picks_the_epoch(busi_root, tmp_path):
    from busi.commands.train import main as train_main

    from fake_busi import train_args

    runs = tmp_path / "runs"
    extra = ("--model.conformal_alpha=0.5", "--data.calibration_fraction=0.5", "--data.val_fraction=0.3")
    assert train_main(train_args(busi_root, runs, *extra)) == 0
    run = next(runs.glob("lightning_logs/version_*"))
    splits = Counter(r["split"] for r in csv.DictReader((run / "split.csv").open()))
    report = json.loads((run / "report.json").read_text())
    assert splits["calibration"] > 0 and report["splits"]["val"]["samples"] == splits["val"]  # picks on the rest
    sets = report["conformal"]
    assert sum(sets["calibration_images"].values()) == splits["calibration"]
    assert sets["fitted_on"].startswith("the calibration split")
    assert report["calibration"]["images"] == splits["calibration"]
