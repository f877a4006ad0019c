import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from busi.commands.explain import main as explain_main
from busi.commands.predict import main as predict_main
from busi.evaluation.localisation import localisation
from busi.evaluation.plots import CAPTION_HEIGHT
from busi.io.images import load_mask

from fake_busi import IMAGE_SIZE, write_busi_folder


def test_localisation_scores_energy_share_and_pointing_hit():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[20:40, 20:40] = True
    inside = torch.zeros(64, 64)
    inside[25:35, 25:35] = 1.0
    assert localisation(inside, mask) == {"energy_inside": 1.0, "mask_area": 400 / 4096, "pointing_hit": 1.0}
    near = torch.zeros(64, 64)
    near[30, 43] = 1.0  # 4 px right of the mask: within the 5 px dilation
    assert localisation(near, mask)["pointing_hit"] == 1.0 and localisation(near, mask)["energy_inside"] == 0.0
    far = torch.zeros(64, 64)
    far[5, 5], far[30, 30] = 1.0, 0.5  # the peak is far away, a third of the energy inside
    scores = localisation(far, mask)
    assert scores["pointing_hit"] == 0.0 and scores["energy_inside"] == pytest.approx(1 / 3)


def test_masks_are_united_and_squashed_like_their_image(tmp_path):
    first, second = np.zeros((100, 200), np.uint8), np.zeros((100, 200), np.uint8)
    first[:50, :100] = 255
    second[50:, 100:] = 1  # some BUSI masks use 1, not 255
    Image.fromarray(first).save(tmp_path / "a_mask.png")
    Image.fromarray(second).convert("RGB").save(tmp_path / "a_mask_1.png")
    union = torch.from_numpy(load_mask((tmp_path / "a_mask.png", tmp_path / "a_mask_1.png"), 64))
    assert union.shape == (64, 64) and union.float().mean() == 0.5
    assert union[:32, :32].all() and union[32:, 32:].all() and not union[:32, 32:].any()


def test_predict_writes_an_overlay_per_image_with_the_same_probabilities(trained_run, busi_root, tmp_path):
    _, run_dir = trained_run
    ckpt = str(run_dir / "checkpoints" / "best.ckpt")
    folder = busi_root / "malignant"
    assert predict_main(["--ckpt", ckpt, str(folder), "--output", str(tmp_path / "plain.csv")]) == 0
    assert (
        predict_main(
            ["--ckpt", ckpt, str(folder), "--output", str(tmp_path / "cam.csv"), "--cam", str(tmp_path / "cams")]
        )
        == 0
    )
    rows = {}
    for name in ("plain", "cam"):
        with (tmp_path / f"{name}.csv").open(encoding="utf-8") as handle:
            rows[name] = list(csv.DictReader(handle))
    for plain, cam in zip(rows["plain"], rows["cam"], strict=True):
        for column in ("p_benign", "p_malignant", "p_normal"):
            assert abs(float(plain[column]) - float(cam[column])) < 1e-5
    written = sorted((tmp_path / "cams").iterdir())
    assert len(written) == len(rows["cam"])
    with Image.open(written[0]) as picture:
        assert picture.size == (2 * IMAGE_SIZE, IMAGE_SIZE + CAPTION_HEIGHT) and picture.mode == "RGB"


def test_explain_command_scores_the_test_images_with_masks(trained_run, busi_root, tmp_path, capsys):
    _, run_dir = trained_run
    output = tmp_path / "scores.json"
    code = explain_main(
        ["--ckpt", str(run_dir / "checkpoints/best.ckpt"), "--data.root", str(busi_root), "--output", str(output)]
    )
    assert code == 0
    scores = json.loads(output.read_text())
    with (run_dir / "split.csv").open(encoding="utf-8") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test" and row["label"] != "normal"]
    assert sorted(row["path"] for row in scores["images"]) == sorted(row["path"] for row in test_rows)
    for row in scores["images"]:
        assert 0 <= row["energy_inside"] <= 1 and row["pointing_hit"] in (0.0, 1.0)
        assert row["mask_area"] == pytest.approx(1 / 9, abs=0.03)  # the fake masks cover the central third
    assert "pointing hit" in capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())  # the training run's report has them too
    assert report["localisation"]["per_class"] == scores["per_class"]


def test_explain_on_a_folder_outside_the_runs_split_says_so(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    staging, other = write_busi_folder(tmp_path / "staging", per_class=2), tmp_path / "other_hospital"
    for name in ("benign", "malignant", "normal"):  # in a sub-folder: paths none of split.csv's
        (other / name).mkdir(parents=True)
        shutil.move(staging / name, other / name / "export")
    args = ["--ckpt", str(run_dir / "checkpoints" / "best.ckpt"), "--data.root", str(other)]
    assert explain_main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]  # beside the audit's
    assert len(errors) == 1 and "none of its images is in the test split" in errors[0] and "--split all" in errors[0]
    assert explain_main([*args, "--split", "all"]) == 0
