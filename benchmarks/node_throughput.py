"""Instances per second through `storescu → busi-node → Orthanc` with 1 and 4 concurrent associations,
beside `busi-predict` on the same files with and without `--dicom_out` (the SR and SEG writing cost per
instance, and the Secondary Capture's with `--dicom_capture`), on this machine (Debian's orthanc and dcmtk needed).

    python -m benchmarks.node_throughput --ckpt CKPT [--root BUSI_ROOT] [--images 48]

The scans are BUSI images written as ultrasound DICOMs (with a tissue region and its spacing), each its
own instance of one study; the clock runs from the first C-STORE until every instance's results are in Orthanc.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from benchmarks.fuzz_inputs import BUSI

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from fake_dicom import ultrasound_dataset  # noqa: E402
from pacs import running_node, running_orthanc, storescu, wait  # noqa: E402
from service import free_port  # noqa: E402


def write_scans(root: Path, count: int, folder: Path) -> list[Path]:
    images = sorted(p for p in root.rglob("*.png") if "_mask" not in p.name)[:count]
    study, paths = pydicom.uid.generate_uid(), []
    for index, image in enumerate(images):
        pixels = np.asarray(Image.open(image).convert("L"))
        dataset = ultrasound_dataset(pixels, (0, 0, pixels.shape[1] - 1, pixels.shape[0] - 1))
        dataset.PatientName, dataset.PatientID, dataset.StudyInstanceUID = "Bench^Mark", "B-1", study
        dataset.SeriesInstanceUID, dataset.InstanceNumber = pydicom.uid.generate_uid(), index + 1
        paths.append(folder / f"scan{index:03d}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def predict_seconds(ckpt: Path, folder: Path, *options: str) -> float:
    start = time.perf_counter()
    command = [sys.executable, "predict.py", "--ckpt", str(ckpt), str(folder), "--output", str(folder.parent / "p.csv")]
    subprocess.run([*command, "--quiet", *options], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def through_node(ckpt: Path, scans: list[Path], work: Path, associations: int) -> float:
    port = free_port()
    with running_orthanc(work / f"orthanc{associations}", port) as orthanc:
        send = ("--send", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.ae_title}", "--batch_size", "8")
        with running_node(ckpt, work / f"spool{associations}", port, *send, log=work / "node.log"):
            start = time.perf_counter()
            with ThreadPoolExecutor(associations) as pool:
                done = list(pool.map(lambda k: storescu(port, *scans[k::associations]), range(associations)))
            assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
            # an instance moves to done/ once its results are in the archive
            done_dir = work / f"spool{associations}" / "done"
            wait(lambda: len(list(done_dir.glob("*.dcm"))) >= len(scans), 900, "every instance answered")
            seconds = time.perf_counter() - start
            kinds = [orthanc.dataset(i).Modality for i in orthanc.instances()]
            assert kinds.count("SR") == len(scans), kinds
            return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=BUSI)
    parser.add_argument("--images", type=int, default=48)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "scans"
        folder.mkdir()
        scans = write_scans(args.root, args.images, folder)
        n = len(scans)
        plain = predict_seconds(args.ckpt, folder)
        results = predict_seconds(
            args.ckpt, folder, "--masks", str(Path(work) / "m"), "--dicom_out", str(Path(work) / "r")
        )
        capture = predict_seconds(
            args.ckpt, folder, "--masks", str(Path(work) / "m"), "--dicom_out", str(Path(work) / "c"),
            "--dicom_capture", "true",
        )  # fmt: skip
        print(f"{n} DICOM scans of {args.root}; {args.ckpt}")
        print(f"busi-predict: {n / plain:.2f} instances/s ({plain:.1f} s, start-up included)")
        print(f"busi-predict --masks --dicom_out: {n / results:.2f} instances/s; SR and SEG writing "
              f"{(results - plain) / n * 1000:.0f} ms per instance")  # fmt: skip
        print(f"… --dicom_capture true: {n / capture:.2f} instances/s; the capture "
              f"{(capture - results) / n * 1000:.0f} ms per instance more")  # fmt: skip
        for associations in (1, 4):
            seconds = through_node(args.ckpt, scans, Path(work), associations)
            print(
                f"storescu → busi-node → Orthanc, {associations} association(s): {n / seconds:.2f} instances/s ({seconds:.1f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
