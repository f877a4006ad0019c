"""busi-serve: a real server in a subprocess on a loopback port, real HTTP requests. Its answers equal
busi-predict's CSV (PNG and DICOM), every bad request gets its status and one line while the service
keeps serving, concurrent requests are all answered, /health waits for the warm-up, the key is enforced."""

import csv
import hashlib
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

pytest.importorskip("litserve")
pytest.importorskip("pydicom")
import pydicom.examples
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from busi.commands.predict import main as predict_main
from busi.commands.serve import main as serve_main

from fake_busi import ultrasound_like
from fake_dicom import ultrasound_dataset, write_dicom
from service import running_service


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def post(url: str, path: Path, **options) -> requests.Response:
    return requests.post(f"{url}/predict", data=path.read_bytes(), timeout=60, **options)


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run[1] / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def service(ckpt):
    with running_service(ckpt, "--max_request_mb", "1") as service:
        yield service


@pytest.fixture(scope="module")
def scans(busi_root, tmp_path_factory) -> list[Path]:
    """PNGs of the folder, a DICOM written from a BUSI-like scan with a tissue region, pydicom's YBR example."""
    folder = tmp_path_factory.mktemp("scans")
    pngs = [busi_root / name / f"{name} ({k}).png" for name in ("benign", "malignant", "normal") for k in (1, 2)]
    scan = ultrasound_like(np.random.default_rng(5), 1, 96, 120)
    dicom = write_dicom(folder / "region.dcm", np.stack([scan] * 3, axis=-1), region=(12, 6, 101, 85))
    example = folder / "ybr_color.dcm"
    example.write_bytes(Path(pydicom.examples.get_path("ybr_color")).read_bytes())
    return [*pngs, dicom, example]


def test_answers_equal_busi_predicts_csv_for_pngs_and_dicoms(service, ckpt, scans, tmp_path):
    output = tmp_path / "predictions.csv"
    assert predict_main(["--ckpt", str(ckpt), *map(str, scans), "--output", str(output), "--quiet"]) == 0
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    for path, row in zip(scans, read_rows(output), strict=True):
        answer = post(service.url, path)
        assert answer.status_code == 200, answer.text
        answer = answer.json()
        assert answer["label"] == row["label"]
        for name, probability in answer["probabilities"].items():
            assert probability == pytest.approx(float(row[f"p_{name}"]), abs=1e-6)
        assert answer["model"]["sha256"] == digest and answer["model"]["image_size"] == 64
        if row["pixel_spacing_x_mm"]:
            spacing = [float(row["pixel_spacing_x_mm"]), float(row["pixel_spacing_y_mm"])]
            assert answer["image"]["pixel_spacing_mm"] == pytest.approx(spacing)
        assert "Research use only" in answer["warning"]
    upload = requests.post(
        f"{service.url}/predict", files={"scan": ("any-name.bin", scans[0].read_bytes())}, timeout=60
    ).json()  # a multipart upload, read by content whatever its name
    assert upload["probabilities"] == post(service.url, scans[0]).json()["probabilities"]


def bad_requests(folder: Path) -> dict[str, tuple[int, str, dict]]:
    """name → (status, words in its one line, requests.post options)."""
    good = Image.fromarray(ultrasound_like(np.random.default_rng(1), 0, 80, 90))
    png = io.BytesIO()
    good.save(png, format="PNG")
    huge = io.BytesIO()
    Image.new("1", (10000, 10000)).save(huge, format="PNG")  # 100 M pixels in a few kB
    report = ultrasound_dataset(np.zeros((8, 8), np.uint8))  # a DICOM object without pixels, as a report is
    del report.PixelData
    sr = io.BytesIO()
    report.save_as(sr, enforce_file_format=True)
    video = ultrasound_dataset(np.zeros((8, 8), np.uint8))
    video.file_meta.TransferSyntaxUID = MPEG2MPML
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(200)])
    mpeg = io.BytesIO()
    video.save_as(mpeg, enforce_file_format=True)
    return {
        "no body": (400, "no image", {"data": b""}),
        "text": (415, "not a readable image", {"data": b"hello, not a scan\n"}),
        "truncated png": (400, "not a readable image", {"data": png.getvalue()[: len(png.getvalue()) // 2]}),
        "dicom without pixels": (415, "without pixel data", {"data": sr.getvalue()}),
        "dicom video": (415, "cannot decode its transfer syntax MPEG2", {"data": mpeg.getvalue()}),
        "too many pixels": (413, "too large to decode safely", {"data": huge.getvalue()}),
        "too many bytes": (413, "larger than 1 MB", {"data": b"\x89PNG" + bytes(3 * 2**20)}),
        "mask without a decoder": (400, "no lesion decoder", {"data": png.getvalue(), "params": {"mask": "true"}}),
    }


def test_every_bad_request_gets_its_status_and_one_line_and_the_service_goes_on(service, scans, tmp_path):
    for name, (status, words, options) in bad_requests(tmp_path).items():
        answer = requests.post(f"{service.url}/predict", timeout=60, **options)
        assert answer.status_code == status, (name, answer.text)
        detail = answer.json()["detail"]
        assert words in detail and "\n" not in detail and "Traceback" not in detail, (name, detail)
        assert post(service.url, scans[0]).status_code == 200, name  # and it still answers
    assert requests.get(f"{service.url}/predict", timeout=10).status_code == 405
    assert not any("Traceback" in line for line in service.lines())


def readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except OSError:  # the folder's corrupt file
        return False


def test_32_concurrent_requests_are_all_answered_as_each_alone(service, busi_root):
    images = [p for p in sorted(busi_root.rglob("*.png")) if "_mask" not in p.name and readable(p)][:32]
    assert len(images) == 32
    alone = {path: post(service.url, path).json()["probabilities"] for path in images[:4]}
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda path: post(service.url, path), images))
    assert [a.status_code for a in answers] == [200] * 32
    for path, answer in zip(images[:4], answers, strict=False):  # batched with others: the same answer
        for name, probability in answer.json()["probabilities"].items():
            assert probability == pytest.approx(alone[path][name], abs=1e-6)


def test_health_says_ready_only_after_the_model_answered_its_warm_up(service):
    warmed = [when for when, line in service.log if "answered its warm-up image" in line]
    ready = [when for when, status in service.health if status == 200]
    assert warmed and ready and warmed[0] <= ready[0]
    assert all(status != 200 for when, status in service.health if when < warmed[0])


def test_info_is_the_model_card_of_the_checkpoint(service, ckpt):
    card = requests.get(f"{service.url}/info", timeout=10).json()["model"]
    summary = torch.load(ckpt, map_location="cpu", weights_only=True)["busi_summary"]
    assert card["classes"] == ["benign", "malignant", "normal"]
    assert card["identity"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert card["training"]["data"] == summary["data"] and card["test_split"] == summary["test"]
    assert card["calibration"]["temperature"] == summary["test"]["temperature"]
    assert "Research" in card["intended_use"] and card["known_limits"]
    assert card["model_card_markdown"].startswith("# Model card")


def slow_upload(url: str) -> socket.socket:
    """A POST /predict whose body is still coming: it is in flight until the rest is sent."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    )
    return connection


def test_the_api_key_is_enforced_and_requests_beyond_the_queue_get_503(ckpt, scans, service):
    # also unbatched (one request per forward pass), on two model workers, answering in bfloat16
    fp32 = post(service.url, scans[0]).json()
    with running_service(
        ckpt,
        *("--api_key_env", "BUSI_TEST_KEY", "--max_queue", "2", "--max_batch_size", "1", "--workers", "2"),
        *("--precision", "bf16"),
        env={"BUSI_TEST_KEY": "s3cret"},
    ) as service:
        key = {"Authorization": "Bearer s3cret"}
        assert post(service.url, scans[0]).status_code == 401
        assert post(service.url, scans[0], headers={"Authorization": "Bearer guess"}).status_code == 403
        bf16 = post(service.url, scans[0], headers=key)
        assert bf16.status_code == 200 and bf16.json()["label"] == fp32["label"]
        for name, probability in bf16.json()["probabilities"].items():
            assert probability == pytest.approx(fp32["probabilities"][name], abs=1e-2)
        assert requests.get(f"{service.url}/info", timeout=10).status_code == 401
        assert requests.get(f"{service.url}/health", timeout=10).status_code == 200  # a probe needs no key
        held = [slow_upload(service.url) for _ in range(2)]
        time.sleep(0.5)
        busy = post(service.url, scans[0], headers=key)
        assert busy.status_code == 503 and "busy" in busy.json()["detail"]
        for connection in held:
            connection.sendall(b"x" * 90)  # the rest of their bodies: not images, answered 415
            assert b" 415 " in connection.recv(4096).split(b"\r\n")[0] + b" "
            connection.close()
        assert post(service.url, scans[0], headers=key).status_code == 200


def test_serving_beyond_this_machine_without_a_key_is_refused_in_one_line(ckpt, capsys, monkeypatch):
    assert serve_main(["--ckpt", str(ckpt), "--host", "0.0.0.0"]) == 2
    assert "needs an API key" in capsys.readouterr().err
    monkeypatch.delenv("BUSI_NO_SUCH_KEY", raising=False)
    assert serve_main(["--ckpt", str(ckpt), "--api_key_env", "BUSI_NO_SUCH_KEY"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "BUSI_NO_SUCH_KEY" in error


def test_a_model_with_prediction_sets_answers_with_its_set_as_busi_predict_does(conformal_run, scans, tmp_path):
    ckpt = conformal_run / "checkpoints" / "best.ckpt"
    output = tmp_path / "predictions.csv"
    pngs = scans[:6]
    assert predict_main(["--ckpt", str(ckpt), *map(str, pngs), "--output", str(output), "--quiet"]) == 0
    with running_service(ckpt) as service:
        for path, row in zip(pngs, read_rows(output), strict=True):
            answer = post(service.url, path).json()["prediction_set"]
            assert ("|".join(answer["classes"]) or "none") == row["prediction_set"]
            assert answer["refer"] == (row["refer"] == "yes") and "miscoverage 0.5" in answer["rule"]
