import csv
import json
import shutil
from pathlib import Path

import pytest

from busi.commands.evaluate import main as evaluate_main
from busi.commands.predict import main as predict_main


def read_csv(path):
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_reports_on_every_image_of_a_labelled_folder(trained_run, busi_root, tmp_path):
    _, run_dir = trained_run
    ckpt = str(run_dir / "checkpoints/best.ckpt")
    output = tmp_path / "evaluation"
    assert evaluate_main(["--ckpt", ckpt, "--data.root", str(busi_root), "--output", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    audit = json.loads((run_dir / "audit.json").read_text())
    test = report["splits"]["test"]
    assert list(report["splits"]) == ["test"] and test["samples"] == audit["images"]  # every readable image
    assert report["data"]["images"] == audit["images"]
    assert sum(map(sum, test["confusion_matrix"])) == audit["images"]
    assert report["localisation"]["per_class"]  # the fake folder has lesion masks
    for name in ("report.txt", "confusion_matrix.png", "reliability.png"):
        assert (output / name).is_file()
    evaluated = read_csv(output / "predictions.csv")
    assert predict_main(["--ckpt", ckpt, str(busi_root), "--output", str(tmp_path / "predicted.csv")]) == 0
    predicted = {row["path"]: row for row in read_csv(tmp_path / "predicted.csv") if not row["error"]}
    assert len(evaluated) == test["samples"] == len(predicted)
    for row in evaluated:
        for column in ("p_benign", "p_malignant", "p_normal"):
            assert float(row[column]) == pytest.approx(float(predicted[row["path"]][column]), abs=1e-6)
    labels = {name: i for i, name in enumerate(report["class_names"])}
    truth = [Path(row["path"]).relative_to(busi_root).parts[0] for row in evaluated]
    correct = sum(labels[row["label"]] == labels[true] for row, true in zip(evaluated, truth, strict=True))
    assert test["accuracy"] == pytest.approx(correct / len(evaluated))


def test_evaluate_refuses_a_missing_folder_with_one_line(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    code = evaluate_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), "--data.root", str(tmp_path / "nowhere")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "nowhere" in error


def test_evaluate_says_how_many_images_the_model_saw_and_can_leave_them_out(trained_run, busi_root, tmp_path, capsys):
    _, run_dir = trained_run
    ckpt = str(run_dir / "checkpoints/best.ckpt")
    splits = [row["split"] for row in read_csv(run_dir / "split.csv")]
    train, val, test = (splits.count(name) for name in ("train", "val", "test"))
    copy = tmp_path / "copied_elsewhere"  # the same files under another root: found by their content
    shutil.copytree(busi_root, copy)
    for root in (busi_root, copy):
        assert evaluate_main(["--ckpt", ckpt, "--data.root", str(root), "--output", str(tmp_path / "all")]) == 0
        warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")][-1]
        assert f"{train + val} of {train + val + test} images" in warning and f"training ({train})" in warning
        assert f"validation ({val})" in warning and "--unseen_only" in warning
    args = ["--ckpt", ckpt, "--data.root", str(copy), "--output", str(tmp_path / "unseen"), "--unseen_only"]
    assert evaluate_main(args) == 0
    report = json.loads((tmp_path / "unseen" / "report.json").read_text())
    assert report["splits"]["test"]["samples"] == test == len(read_csv(tmp_path / "unseen" / "predictions.csv"))
    assert report["data"]["seen_by_the_model"] == {"train": train, "val": val, "scored": 0}
