"""busi-predict --dicom_out: a TID 1500 Comprehensive 3D SR and a DICOM SEG per answered frame, in the
source's study, read back with highdicom and pydicom, checked by dciodvfy (dicom3tools), and equal to the
CSV's answer and to the mask --masks writes."""

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("highdicom")
import highdicom as hd
import pydicom
import pydicom.examples
from pydicom.uid import generate_uid

from busi.archive.results import is_busi_result
from busi.commands.predict import main as predict_main

from fake_dicom import ultrasound_dataset

REGION = (10, 8, 109, 87)  # x0, y0, x1, y1 inclusive: the tissue region inside the frame


def scan_in_a_study(busi_root: Path, path: Path) -> Path:
    """A BUSI image as a scanner's DICOM, with a patient and a study, its tissue region smaller than the frame."""
    pixels = np.asarray(Image.open(busi_root / "malignant" / "malignant (1).png").convert("L").resize((120, 96)))
    dataset = ultrasound_dataset(pixels, REGION)
    dataset.PatientName, dataset.PatientID, dataset.PatientSex = "Test^Busi", "P-1", "F"  # no birth date: as
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()  # scanners leave out
    dataset.StudyDate, dataset.StudyTime, dataset.StudyID, dataset.AccessionNumber = "20260101", "101500", "1", "A-1"
    dataset.SeriesNumber, dataset.InstanceNumber = 1, 1  # nor a referring physician
    dataset.save_as(path, enforce_file_format=True)
    return path


def items(content, name: str) -> list:
    """Content items of an SR tree with the concept name `name`, depth first."""
    found = []
    for item in content:
        if item.ConceptNameCodeSequence[0].CodeMeaning == name:
            found.append(item)
        found += items(item.get("ContentSequence", []), name)
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []  # Debian's dicom3tools is absent: the other checks still run
    finished = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (finished.stdout + finished.stderr).splitlines() if line.startswith("Error")]


def test_a_scan_gets_an_sr_and_a_seg_in_its_study_equal_to_the_csv(segmenting_run, busi_root, tmp_path):
    source = scan_in_a_study(busi_root, tmp_path / "scan.dcm")
    output, masks, results = tmp_path / "p.csv", tmp_path / "masks", tmp_path / "results"
    ckpt = segmenting_run / "checkpoints" / "best.ckpt"
    args = [
        "--ckpt",
        str(ckpt),
        str(source),
        "--output",
        str(output),
        "--masks",
        str(masks),
        "--dicom_out",
        str(results),
    ]
    assert predict_main(args) == 0
    (row,) = csv.DictReader(output.open())
    assert int(row["lesions"]) >= 1
    sr_path, seg_path = results / "scan_sr.dcm", results / "scan_seg.dcm"
    original = pydicom.dcmread(source)
    for path in (sr_path, seg_path):
        written = pydicom.dcmread(path)
        assert written.StudyInstanceUID == original.StudyInstanceUID and written.PatientID == "P-1"
        assert written.PatientBirthDate == "" and written.AccessionNumber == "A-1"
        assert (
            written.SeriesInstanceUID != original.SeriesInstanceUID
            and written.SOPInstanceUID != original.SOPInstanceUID
        )
        assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(sr_path)
    assert sr.VerificationFlag == "UNVERIFIED" and "research use only" in sr.SeriesDescription
    (finding,) = [
        i
        for i in items(sr.ContentSequence, "Finding")
        if i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeMeaning != "Lesion"
    ]
    assert finding.ConceptCodeSequence[0].CodeMeaning.lower() == row["label"]
    for name, column in (
        ("Probability of benign finding", "p_benign"),
        ("Probability of cancer", "p_malignant"),
        ("Probability of normal finding", "p_normal"),
    ):
        (number,) = items(sr.ContentSequence, name)
        assert float(number.MeasuredValueSequence[0].NumericValue) == pytest.approx(float(row[column]), abs=1e-6)
    long_axis = items(sr.ContentSequence, "Long axis")
    assert len(long_axis) == int(row["lesions"])
    assert float(long_axis[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(
        float(row["long_axis_mm"]), abs=0.005
    )
    assert long_axis[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    parameters = [i.TextValue for i in items(sr.ContentSequence, "Algorithm Parameters")]
    assert any(ckpt_digest(ckpt) in p for p in parameters)
    # the SEG holds the mask --masks wrote, back in its place in the whole frame
    seg = hd.seg.segread(seg_path)
    frame = seg.pixel_array.reshape(-1, 96, 120)[0].astype(bool)
    written_mask = np.asarray(Image.open(row["mask"])) > 0
    x0, y0, x1, y1 = REGION
    assert np.array_equal(frame[y0 : y1 + 1, x0 : x1 + 1], written_mask) and not frame.sum() - written_mask.sum()


def ckpt_digest(ckpt: Path) -> str:
    import hashlib

    return hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_a_capture_shows_the_scan_with_the_lesion_outlined_and_the_answer_under_it(segmenting_run, busi_root, tmp_path):
    source = scan_in_a_study(busi_root, tmp_path / "scan.dcm")
    output, masks, results = tmp_path / "p.csv", tmp_path / "masks", tmp_path / "results"
    ckpt = segmenting_run / "checkpoints" / "best.ckpt"
    args = ["--ckpt", str(ckpt), str(source), "--output", str(output), "--masks", str(masks)]
    assert predict_main([*args, "--dicom_out", str(results), "--dicom_capture", "true"]) == 0
    (row,) = csv.DictReader(output.open())
    assert sorted(p.name for p in results.iterdir()) == ["scan_capture.dcm", "scan_seg.dcm", "scan_sr.dcm"]
    capture, original = pydicom.dcmread(results / "scan_capture.dcm"), pydicom.dcmread(source)
    assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and capture.BurnedInAnnotation == "YES"
    assert capture.StudyInstanceUID == original.StudyInstanceUID and capture.PatientID == "P-1"
    assert is_busi_result(capture) and dciodvfy_errors(results / "scan_capture.dcm") == []
    pixels = capture.pixel_array
    assert pixels.shape[0] > original.Rows and pixels.shape[1:] == (original.Columns, 3)  # the caption under it
    scan = pixels[: original.Rows].astype(int)
    changed = (scan != np.stack([original.pixel_array] * 3, axis=-1)).any(axis=-1)
    mask = np.zeros((original.Rows, original.Columns), dtype=bool)
    x0, y0, x1, y1 = REGION
    mask[y0 : y1 + 1, x0 : x1 + 1] = np.asarray(Image.open(row["mask"])) > 0
    inside, (rows, columns) = np.pad(mask, 1), mask.shape
    interior = np.logical_and.reduce([inside[y : y + rows, x : x + columns] for y in range(3) for x in range(3)])
    # every pixel changed is the lesion's edge in magenta, and the edge is drawn
    assert changed.any() and not (changed & ~(mask & ~interior)).any()
    assert (scan[changed] == (255, 0, 255)).all()
    assert pixels[original.Rows :].max() > 200  # white text on the black band
    assert predict_main([*args[:5], "--dicom_capture", "true"]) == 2  # without --dicom_out: one line, no run


def test_a_cine_loop_and_a_model_without_a_decoder_get_an_sr_only(trained_run, tmp_path):
    _, run_dir = trained_run
    cine = tmp_path / "cine.dcm"
    shutil.copy(pydicom.examples.get_path("ybr_color"), cine)  # 30 frames: the middle one is answered
    output, results = tmp_path / "p.csv", tmp_path / "results"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    args = ["--ckpt", str(ckpt), str(cine), "--output", str(output), "--dicom_out", str(results)]
    assert predict_main(args) == 0
    (row,) = csv.DictReader(output.open())
    assert sorted(p.name for p in results.iterdir()) == ["cine_frame16_sr.dcm"]  # the frame answered names it
    sr = hd.sr.srread(results / "cine_frame16_sr.dcm")
    assert sr.StudyInstanceUID == pydicom.dcmread(cine).StudyInstanceUID
    (number,) = items(sr.ContentSequence, "Probability of cancer")
    assert float(number.MeasuredValueSequence[0].NumericValue) == pytest.approx(float(row["p_malignant"]), abs=1e-6)
    assert not items(sr.ContentSequence, "Long axis")
    (source,) = items(sr.ContentSequence, "Source of Measurement")
    assert int(source.ReferencedSOPSequence[0].ReferencedFrameNumber) == 16  # pydicom's middle of 30: frame 16
    assert dciodvfy_errors(results / "cine_frame16_sr.dcm") == []
    # its capture: the answered frame as shown (YBR → RGB), unchanged without a lesion decoder
    assert predict_main([*args, "--dicom_capture", "true"]) == 0
    capture = pydicom.dcmread(results / "cine_frame16_capture.dcm")
    frame = pydicom.pixels.pixel_array(pydicom.dcmread(cine), index=15)
    assert np.array_equal(capture.pixel_array[: frame.shape[0]], frame) and dciodvfy_errors(capture.filename) == []
