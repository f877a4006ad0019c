"""busi-node against a real archive: dcmtk's storescu sends scans to busi-node, busi-node sends its SR and
SEG to Debian's Orthanc (started by the test on loopback ports), and the test reads them back through
Orthanc's REST API: in the source's study, equal to busi-predict's CSV and masks; what is not an image and
busi's own results get a line and no answer; a node killed mid-batch and restarted answers every instance
once; four concurrent associations lose nothing."""

import csv
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
import highdicom as hd
import pydicom
from pydicom.uid import MPEG2MPML, generate_uid
from test_dicom_results import items, scan_in_a_study

from busi.commands.predict import main as predict_main

from pacs import dcmtk, running_node, running_orthanc, storescu, wait
from service import free_port

if not (dcmtk("storescu") and dcmtk("echoscu") and __import__("shutil").which("Orthanc")):
    pytest.skip("needs Debian's orthanc and dcmtk (apt-get install orthanc dcmtk)", allow_module_level=True)


def copies(source: Path, folder: Path, count: int) -> list[Path]:
    """`count` instances of one scan, each with its own SOP Instance UID, in the same study."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        dataset = pydicom.dcmread(source)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = index + 1
        dataset.save_as(folder / f"copy{index}.dcm", enforce_file_format=True)
        paths.append(folder / f"copy{index}.dcm")
    return paths


def by_kind(orthanc) -> dict[str, list]:
    found: dict[str, list] = {"SR": [], "SEG": []}
    for instance in orthanc.instances():
        dataset = orthanc.dataset(instance)
        found.setdefault(dataset.Modality, []).append(dataset)
    return found


def test_scans_sent_to_the_node_come_back_to_the_archive_as_busi_predict_answers_them(
    segmenting_run, busi_root, tmp_path
):
    ckpt = segmenting_run / "checkpoints" / "best.ckpt"
    scan = scan_in_a_study(busi_root, tmp_path / "scan.dcm")
    output, masks = tmp_path / "p.csv", tmp_path / "masks"
    assert predict_main(["--ckpt", str(ckpt), str(scan), "--output", str(output), "--masks", str(masks)]) == 0
    (row,) = csv.DictReader(output.open())
    report = pydicom.Dataset()  # not an image: a line, no answer
    report.SOPClassUID, report.SOPInstanceUID, report.Modality = "1.2.840.10008.5.1.4.1.1.88.33", generate_uid(), "SR"
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID, report.file_meta.MediaStorageSOPInstanceUID = (
        report.SOPClassUID,
        report.SOPInstanceUID,
    )
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.StudyInstanceUID = pydicom.dcmread(scan).StudyInstanceUID
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    ct = pydicom.dcmread(scan)  # an image of a modality the node is not configured to answer
    ct.Modality, ct.SOPInstanceUID = "CT", generate_uid()
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    video = pydicom.dcmread(scan)  # a transfer syntax busi has no decoder for, sent as it is
    video.SOPInstanceUID = video.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    video.file_meta.TransferSyntaxUID = MPEG2MPML
    video.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + bytes(200)])
    video.save_as(tmp_path / "video.dcm", enforce_file_format=True)
    port, log = free_port(), tmp_path / "node.log"
    with running_orthanc(tmp_path / "orthanc", port) as orthanc:
        send = ("--send", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.ae_title}", "--modalities", "[US]")
        with running_node(ckpt, tmp_path / "spool", port, *send, "--dicom_capture", "true", log=log):
            assert storescu(port, scan, tmp_path / "report.dcm", tmp_path / "ct.dcm").returncode == 0
            assert storescu(port, tmp_path / "video.dcm", propose="-xm").returncode == 0  # MPEG-2, as sent
            wait(lambda: len(orthanc.instances()) >= 3, 120, "the SR, the SEG and the capture in Orthanc")
            results = sorted((tmp_path / "spool" / "results").iterdir())
            assert storescu(port, *results).returncode == 0  # routed back: ignored, no loop
            time.sleep(3)
        found, stored = by_kind(orthanc), len(orthanc.instances())
    assert len(found["SR"]) == len(found["SEG"]) == len(found["OT"]) == 1 and stored == 3
    source = pydicom.dcmread(scan)
    sr, seg, capture = found["SR"][0], found["SEG"][0], found["OT"][0]
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    (cancer,) = items(sr.ContentSequence, "Probability of cancer")
    assert float(cancer.MeasuredValueSequence[0].NumericValue) == pytest.approx(float(row["p_malignant"]), abs=1e-6)
    (long_axis, *_) = items(sr.ContentSequence, "Long axis")
    assert float(long_axis.MeasuredValueSequence[0].NumericValue) == pytest.approx(
        float(row["long_axis_mm"]), abs=0.005
    )
    frame = hd.seg.Segmentation.from_dataset(seg).pixel_array.reshape(-1, 96, 120)[0].astype(bool)
    x0, y0, x1, y1 = (10, 8, 109, 87)
    assert np.array_equal(frame[y0 : y1 + 1, x0 : x1 + 1], np.asarray(Image.open(row["mask"])) > 0)
    lines = log.read_text()
    assert f"STORESCU {source.SOPInstanceUID}: {row['label']}" in lines and "sent to ORTHANC" in lines
    assert "skipped (no pixel data" in lines and "ignored (a result busi wrote)" in lines
    assert "skipped (modality CT; this node answers US)" in lines
    assert f"{video.SOPInstanceUID}: skipped (busi cannot decode its transfer syntax MPEG2" in lines
    assert "Traceback" not in lines


def test_a_node_killed_mid_batch_answers_every_instance_once_after_its_restart(trained_run, busi_root, tmp_path):
    _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"  # no decoder: one SR per instance
    scans = copies(scan_in_a_study(busi_root, tmp_path / "scan.dcm"), tmp_path / "scans", 12)
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "node.log"
    with running_orthanc(tmp_path / "orthanc", port) as orthanc:
        send = ("--send", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.ae_title}", "--batch_size", "4")
        with running_node(ckpt, spool, port, *send, log=log) as node:
            with ThreadPoolExecutor(4) as pool:  # four associations at once, three scans each
                sent = list(pool.map(lambda part: storescu(port, *part), [scans[k::4] for k in range(4)]))
            assert [done.returncode for done in sent] == [0] * 4
            wait(lambda: len(orthanc.instances()) >= 1, 120, "a first result")
            os.killpg(node.pid, signal.SIGKILL)  # mid-way: some answered and sent, the rest still spooled
            node.wait()
        left = len(list((spool / "incoming").glob("*.dcm")))
        with running_node(ckpt, spool, port, *send, log=log):
            wait(lambda: len(orthanc.instances()) >= 12 and not list((spool / "incoming").glob("*.dcm")), 180, "all")
            time.sleep(2)
        results = by_kind(orthanc)["SR"]
    # each received instance answered once in the archive (results' UIDs are fixed by their source), none lost
    assert len(results) == 12 and len({ds.SOPInstanceUID for ds in results}) == 12
    assert sorted(p.name for p in (spool / "done").iterdir()) == sorted(
        f"{pydicom.dcmread(s).SOPInstanceUID}.dcm" for s in scans
    )
    if left:  # the kill came before the spool was empty: the restart said so and finished it
        assert f"{left} instances in the spool from an earlier run" in log.read_text()
