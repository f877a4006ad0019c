import csv
import pickle
import shutil

import pytest
import torch

from busi.commands.predict import main as predict_main
from busi.errors import WeightsError
from busi.model.classifier import load_classifier


def read_rows(path):
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_folder_prediction_writes_the_csv_contract_with_error_rows(trained_run, busi_root, tmp_path):
    _, run_dir = trained_run
    folder = tmp_path / "incoming"
    shutil.copytree(busi_root / "malignant", folder / "nested")
    (folder / "notes.png").write_text("this is text")
    output = tmp_path / "preds.csv"
    code = predict_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), str(folder), "--output", str(output)])
    assert code == 0
    columns, rows = read_rows(output)
    assert columns == ["path", "label", "confidence", "p_benign", "p_malignant", "p_normal", "error"]
    assert not any("_mask" in row["path"] for row in rows)
    assert len(rows) == len([p for p in folder.rglob("*.png") if "_mask" not in p.name])
    failed = [row for row in rows if row["error"]]
    assert [row["path"] for row in failed] == [str(folder / "notes.png")]
    assert failed[0]["label"] == "" and "not a readable image" in failed[0]["error"]
    for row in rows:
        if not row["error"]:
            probabilities = [float(row[f"p_{c}"]) for c in ("benign", "malignant", "normal")]
            assert abs(sum(probabilities) - 1) < 1e-5
            assert float(row["confidence"]) == max(probabilities)
            assert row["label"] == ("benign", "malignant", "normal")[probabilities.index(max(probabilities))]


def test_prediction_with_no_readable_image_exits_2(trained_run, tmp_path):
    _, run_dir = trained_run
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    output = tmp_path / "preds.csv"
    assert predict_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), str(empty), "--output", str(output)]) == 2
    _, rows = read_rows(output)
    assert len(rows) == 1 and rows[0]["error"]


class RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = marker
    ckpt = tmp_path / "evil.ckpt"
    with ckpt.open("wb") as handle:
        pickle.dump({"state_dict": {}, "hyper_parameters": payload}, handle)
    with pytest.raises(WeightsError, match="refused"):
        load_classifier(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("option", "expected"),
    [(["--device", "cuda:7"], "--device cuda:7: no such CUDA device"), (["--output", "{dir}"], "cannot write there")],
    ids=["missing device", "output is a folder"],
)
def test_unusable_options_exit_with_one_line(trained_run, busi_root, tmp_path, capsys, option, expected):
    _, run_dir = trained_run
    option = [part.format(dir=tmp_path) for part in option]
    code = predict_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), str(busi_root / "benign"), *option])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and expected in error


@pytest.mark.parametrize(
    "contents",
    [{"weights": torch.ones(3)}, {"state_dict": {}, "hyper_parameters": {"colour": "red"}}, [1, 2, 3]],
    ids=["a bare state dict", "foreign hyper-parameters", "not a dict"],
)
def test_checkpoints_that_are_not_busi_checkpoints_are_refused_with_one_line(tmp_path, contents):
    path = tmp_path / "other.ckpt"
    torch.save(contents, path)
    with pytest.raises(WeightsError, match="not a busi checkpoint"):
        load_classifier(path)


def test_a_named_mask_gets_an_error_row_and_folder_masks_are_counted(trained_run, busi_root, tmp_path, capsys):
    _, run_dir = trained_run
    mask = next((busi_root / "benign").glob("* (1)_mask.png"))
    output = tmp_path / "preds.csv"
    ckpt = str(run_dir / "checkpoints/best.ckpt")
    assert predict_main(["--ckpt", ckpt, str(mask), str(busi_root / "malignant"), "--output", str(output)]) == 0
    _, rows = read_rows(output)
    assert rows[0]["path"] == str(mask) and rows[0]["label"] == ""
    assert "lesion mask" in rows[0]["error"] and mask.name.replace("_mask", "") in rows[0]["error"]
    masks_in_folder = len(list((busi_root / "malignant").glob("*_mask*.png")))
    assert masks_in_folder and f"{masks_in_folder} mask files in the folders skipped" in capsys.readouterr().out


def test_a_malignant_threshold_labels_malignant_from_that_probability_on():
    from busi.evaluation.operating_point import decided_class

    names = ("benign", "malignant", "normal")
    assert decided_class([0.5, 0.3, 0.2], names, None) == 0  # the most probable class
    assert decided_class([0.5, 0.3, 0.2], names, 0.25) == 1  # p_malignant reaches the operating point
    assert decided_class([0.3, 0.2, 0.5], names, 0.25) == 2  # not reached: the most probable of the others
    assert decided_class([0.1, 0.6, 0.3], names, 0.7) == 2  # even when malignant is the most probable


def test_busi_predict_uses_the_stored_operating_point_and_says_which(trained_run, busi_root, tmp_path, capsys):
    _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    point = load_classifier(ckpt).summary["operating_point"]
    assert 0 <= point["threshold"] <= 1 and point["chosen_on"].startswith("the validation split (")
    output = tmp_path / "stored.csv"
    assert (
        predict_main(["--ckpt", str(ckpt), str(busi_root), "--output", str(output), "--malignant_threshold", "stored"])
        == 0
    )
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"labelled malignant when p_malignant ≥ {point['threshold']:.4f} (stored in {ckpt}" in said
    rows = [row for row in read_rows(output)[1] if not row["error"]]
    for row in rows:
        p = {name: float(row[f"p_{name}"]) for name in ("benign", "malignant", "normal")}
        others = max(("benign", "normal"), key=p.get)
        if abs(p["malignant"] - point["threshold"]) > 1e-6:  # the CSV rounds to 6 digits
            assert row["label"] == ("malignant" if p["malignant"] >= point["threshold"] else others)
        assert float(row["confidence"]) == pytest.approx(p[row["label"]], abs=1e-6)
    assert (
        predict_main(["--ckpt", str(ckpt), str(busi_root), "--output", str(output), "--malignant_threshold", "0"]) == 0
    )
    assert {row["label"] for row in read_rows(output)[1] if not row["error"]} == {"malignant"}
    capsys.readouterr()
    assert predict_main(["--ckpt", str(ckpt), str(busi_root), "--malignant_threshold", "1.5"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--malignant_threshold 1.5" in error[0]
