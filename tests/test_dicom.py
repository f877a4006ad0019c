"""DICOM scans everywhere an image goes: pydicom's real ultrasound examples, DICOM files written from
BUSI-like images (predicted exactly as the PNG they were made from), a training folder that mixes both,
and one line for every DICOM file that holds no readable image."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom")
import pydicom.examples
from pydicom.uid import MPEG2MPML

from busi.callbacks.prediction_writer import predict_files
from busi.commands.cache import main as cache_main
from busi.commands.evaluate import main as evaluate_main
from busi.commands.predict import main as predict_main
from busi.data.catalog import read_catalog
from busi.io.dicom import DicomOptions
from busi.io.images import decode_frames, load_mask
from busi.model.classifier import load_classifier
from busi.training.run import run

from fake_busi import lesion_disc, train_args, ultrasound_like
from fake_dicom import ultrasound_dataset, write_dicom

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ("ybr_color", "rgb_color", "palette_color", "jpeg2k")
REGION = (12, 6, 101, 85)  # x0, y0, x1, y1 inclusive, inside a 120×96 frame


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run[1] / "checkpoints" / "best.ckpt"


def test_pydicoms_ultrasound_examples_are_predicted(ckpt, tmp_path):
    for name in EXAMPLES:
        shutil.copy(pydicom.examples.get_path(name), tmp_path / f"{name}.dcm")
    output = tmp_path / "predictions.csv"
    assert predict_main(["--ckpt", str(ckpt), str(tmp_path), "--output", str(output)]) == 0
    rows = read_rows(output)
    assert sorted(Path(r["path"]).stem for r in rows) == sorted(EXAMPLES)
    assert all(r["error"] == "" and r["label"] for r in rows)


def test_the_ybr_cine_loops_middle_frame_is_pydicoms_rgb_frame_and_all_frames_get_a_row(ckpt, tmp_path):
    path = pydicom.examples.get_path("ybr_color")
    rgb = pydicom.examples.ybr_color.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    middle = decode_frames(path, dicom=DicomOptions("middle", "none"))
    assert len(middle) == 1 and middle[0].number == 16 and middle[0].frames == 30
    assert np.array_equal(np.asarray(middle[0].image), rgb[15])
    assert np.array_equal(np.asarray(decode_frames(path, dicom=DicomOptions("7", "none"))[0].image), rgb[6])
    output = tmp_path / "frames.csv"
    assert predict_main(["--ckpt", str(ckpt), str(path), "--dicom_frames", "all", "--output", str(output)]) == 0
    rows = read_rows(output)
    assert [int(r["frame"]) for r in rows] == list(range(1, 31)) and {r["frames"] for r in rows} == {"30"}


def busi_like_scan(seed: int = 3, colour: bool = True) -> np.ndarray:
    pixels = ultrasound_like(np.random.default_rng(seed), 1, 96, 120)
    return np.stack([pixels, pixels, np.roll(pixels, 5, axis=1)], axis=2) if colour else pixels


@pytest.mark.parametrize("kind", ["rgb", "monochrome2", "rgb-rle", "monochrome2-rle", "rgb-region", "no-extension"])
def test_a_dicom_scan_is_predicted_as_the_png_it_was_made_from(kind, trained_run, tmp_path):
    classifier = load_classifier(trained_run[1] / "checkpoints" / "best.ckpt")
    pixels = busi_like_scan(colour=kind.startswith(("rgb", "no")))
    region = REGION if kind.endswith("region") else None
    name = "scan" if kind == "no-extension" else "scan.dcm"
    dicom = write_dicom(tmp_path / name, pixels, region=region, rle=kind.endswith("rle"))
    seen = pixels if region is None else pixels[REGION[1] : REGION[3] + 1, REGION[0] : REGION[2] + 1]
    Image.fromarray(seen).save(tmp_path / "seen.png")
    from_dicom, from_png = predict_files(classifier, [tmp_path])  # the folder: both files are found
    assert from_dicom.path == dicom and from_png.path == tmp_path / "seen.png"
    assert np.abs(np.array(from_dicom.probabilities) - np.array(from_png.probabilities)).max() <= 1e-6
    assert from_dicom.spacing_mm == ((0.125, 0.15) if region else None)


def test_a_dicom_cropped_to_its_region_crops_a_whole_frame_mask_alike(tmp_path):
    root = tmp_path / "busi"
    for label, name in enumerate(("benign", "malignant", "normal")):
        (root / name).mkdir(parents=True)
        pixels = ultrasound_like(np.random.default_rng(label), label, 96, 120)
        write_dicom(root / name / f"{name} (1).dcm", pixels, region=REGION)
        mask = np.zeros((96, 120), dtype=np.uint8)
        mask[lesion_disc(96, 120)] = 255 if label < 2 else 0
        Image.fromarray(mask).save(root / name / f"{name} (1)_mask.png")
    catalog = read_catalog(root, 64, duplicate_distance=-1)
    expected = load_mask((root / "benign" / "benign (1)_mask.png",), 64, (12, 6, 102, 86), (120, 96))
    assert np.array_equal(catalog.mask(0)[0].numpy().astype(bool), expected)
    assert not np.array_equal(expected, load_mask((root / "benign" / "benign (1)_mask.png",), 64))
    assert catalog.audit["formats"] == {"dicom": 3}


def test_a_training_folder_mixing_png_and_dicom_trains_and_its_audit_counts_both(busi_root, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(busi_root, root)
    converted = []
    for name in ("benign", "malignant", "normal"):
        for index in (2, 3, 5):
            png = root / name / f"{name} ({index}).png"
            write_dicom(png.with_suffix(".dcm"), np.asarray(Image.open(png).convert("RGB")))
            png.unlink()
            converted.append(f"{name}/{name} ({index}).dcm")
    trained = run(train_args(root, tmp_path / "runs", epochs=1))
    audit = json.loads((trained.run_dir / "audit.json").read_text())
    assert audit["formats"]["dicom"] == len(converted) and audit["formats"]["png"] > 0
    assert "formats: dicom 9, png" in (trained.run_dir / "audit.txt").read_text()
    split_paths = {row["path"] for row in read_rows(trained.run_dir / "split.csv")}
    assert set(converted) <= split_paths
    assert audit["per_class"]["benign"]["with_masks"] == audit["per_class"]["benign"]["images"] - 2  # as the PNGs
    evaluated = tmp_path / "evaluated"
    ckpt = str(trained.run_dir / "checkpoints" / "best.ckpt")
    assert evaluate_main(["--ckpt", ckpt, "--data.root", str(root), "--output", str(evaluated)]) == 0
    scored = {Path(row["path"]).relative_to(root).as_posix(): row for row in read_rows(evaluated / "predictions.csv")}
    assert all(scored[path]["label"] for path in converted)
    assert cache_main([f"--data.root={root}", "--data.image_size=64", f"--data.cache_dir={tmp_path / 'cache'}"]) == 0


def bad_dicoms(folder: Path) -> dict[str, str]:
    """File name → what its error line must say."""
    folder.mkdir()
    no_pixels = ultrasound_dataset(busi_like_scan())
    del no_pixels.PixelData
    no_pixels.save_as(folder / "report.dcm", enforce_file_format=True)
    video = ultrasound_dataset(busi_like_scan())
    video.file_meta.TransferSyntaxUID = MPEG2MPML
    video.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + bytes(200)])
    video.save_as(folder / "video.dcm", enforce_file_format=True)
    whole = write_dicom(folder / "whole.dcm", busi_like_scan()).read_bytes()
    (folder / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    shutil.copy(pydicom.examples.get_path("dicomdir"), folder / "DICOMDIR")
    (folder / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    return {
        "report.dcm": "without pixel data",
        "video.dcm": "cannot decode its transfer syntax MPEG2",
        "truncated.dcm": "truncated or corrupt DICOM",
        "DICOMDIR": "a DICOMDIR",
        "noise.dcm": "DICOM",
    }


def test_each_bad_dicom_gets_one_line_and_the_rest_is_predicted(ckpt, tmp_path, capsys):
    expected = bad_dicoms(tmp_path / "scans")
    output = tmp_path / "predictions.csv"
    assert predict_main(["--ckpt", str(ckpt), str(tmp_path / "scans"), "--output", str(output)]) == 0
    rows = {Path(r["path"]).name: r for r in read_rows(output)}
    assert rows["whole.dcm"]["error"] == "" and rows["whole.dcm"]["label"]
    for name, reason in expected.items():
        assert reason in rows[name]["error"], rows[name]["error"]
        assert "\n" not in rows[name]["error"]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == len(expected) and "Traceback" not in "".join(errors)


def test_without_the_dicom_extra_a_dcm_file_says_how_to_add_it(ckpt, tmp_path):
    write_dicom(tmp_path / "scan.dcm", busi_like_scan())
    output = tmp_path / "predictions.csv"
    without_pydicom = (
        "import sys; sys.modules['pydicom'] = None; from busi.commands.predict import main; "
        f"sys.exit(main(['--ckpt', {str(ckpt)!r}, {str(tmp_path / 'scan.dcm')!r}, '--output', {str(output)!r}]))"
    )
    finished = subprocess.run([sys.executable, "-c", without_pydicom], cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == 2  # nothing could be predicted
    (row,) = read_rows(output)
    assert 'pip install "busi[dicom]"' in row["error"]
