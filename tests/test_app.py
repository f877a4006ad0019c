"""The Streamlit app, driven headless by Streamlit's AppTest with a real checkpoint and real uploads."""

import io
import os
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

import busi.commands.app as app_module
from busi.commands.app import DISCLAIMER, MAX_UPLOAD_MB, percent

APP = Path(__file__).resolve().parents[1] / "busi" / "commands" / "app.py"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def app(trained_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the checkpoint comes from the sidebar
    monkeypatch.delenv("BUSI_CHECKPOINT", raising=False)
    test = AppTest.from_file(str(APP), default_timeout=120)
    test.run()
    assert not test.exception
    assert "Enter the path of a checkpoint" in test.info[0].value
    return test, trained_run[1] / "checkpoints" / "best.ckpt"


def test_uploads_get_a_class_probabilities_a_heat_map_and_a_table_and_bad_ones_a_message(app, busi_root):
    test, ckpt = app
    test.sidebar.text_input[0].set_value(str(ckpt)).run()
    assert not test.exception and not test.error
    assert test.warning[0].value == DISCLAIMER
    panel = " ".join(m.value for m in test.sidebar.markdown)
    assert "recipe" in panel and "Held-out test split" in panel  # the summary stored in best.ckpt
    (card,) = [e for e in test.sidebar.expander if e.label.startswith("Model card")]
    assert "## Intended use" in card.markdown[0].value and "Not a medical device" in card.markdown[0].value
    good = [p for p in sorted((busi_root / "malignant").glob("*.png")) if "_mask" not in p.name][:2]
    uploads = [(p.name, p.read_bytes(), "image/png") for p in good]
    uploads += [
        ("empty.png", b"", "image/png"),
        ("notes.png", b"not an image at all", "image/png"),
        ("huge.png", png_bytes(Image.new("L", (10_000, 10_000))), "image/png"),
    ]
    test.file_uploader[0].set_value(uploads).run()
    assert not test.exception
    names = [name for name, _, _ in uploads]
    assert [s.value for s in test.subheader if s.value in names] == names
    errors = [e.value for e in test.error]
    assert len(errors) == 3
    assert errors[0] == "empty.png: empty file (0 bytes)"
    assert "notes.png" in errors[1] and "unknown or unsupported format" in errors[1]
    assert "huge.png" in errors[2] and "too large to decode safely" in errors[2]
    verdicts = [m.value for m in test.main.markdown if " · " in m.value and m.value.startswith("**")]
    assert len(verdicts) == len(good)
    assert all(v.split("**")[1] in ("benign", "malignant", "normal") for v in verdicts)
    assert len(test.get("progress")) == 3 * len(good)  # one fixed 0-1 bar per class
    assert len(test.get("image")) == len(good)  # the scan beside its Grad-CAM
    table = test.dataframe[0].value
    assert list(table.columns) == ["path", "label", "confidence", "p_benign", "p_malignant", "p_normal", "error"]
    assert list(table["path"]) == names and (table["error"] != "").sum() == 3
    assert len(test.get("download_button")) == 2


@pytest.mark.parametrize(
    ("probability", "shown"), [(0.548, "54.8 %"), (0.99995, "> 99.9 %"), (0.00004, "< 0.1 %"), (0.999, "99.9 %")]
)
def test_probabilities_never_read_as_certain(probability, shown):
    assert percent(probability) == shown


def test_adding_a_file_computes_only_that_file(trained_run, busi_root, monkeypatch):
    ckpt = str(trained_run[1] / "checkpoints" / "best.ckpt")
    calls = []
    classify = app_module.classify_upload
    monkeypatch.setattr(app_module, "classify_upload", lambda *args: calls.append(args[1]) or classify(*args))
    files = [p for p in sorted((busi_root / "benign").glob("*.png")) if "_mask" not in p.name][:3]
    modified = Path(ckpt).stat().st_mtime
    for count in (2, 3):
        results = [app_module.analyse(ckpt, modified, p.name, p.read_bytes()) for p in files[:count]]
    assert calls == [p.name for p in files]  # each file once, although the second page showed three
    assert all(result["probabilities"] for result in results)


def test_upload_limit_is_the_same_in_the_app_and_streamlit_config():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((APP.parents[2] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB
    assert config["client"]["toolbarMode"] == "minimal"


def test_a_missing_checkpoint_shows_the_reason(app, tmp_path):
    test, _ = app
    test.sidebar.text_input[0].set_value(str(tmp_path / "nowhere.ckpt")).run()
    assert not test.exception
    assert "checkpoint not found" in test.error[0].value


def test_a_dicom_upload_is_classified_like_an_image(app, tmp_path):
    pytest.importorskip("pydicom")
    import numpy as np

    from fake_busi import ultrasound_like
    from fake_dicom import write_dicom

    test, ckpt = app
    test.sidebar.text_input[0].set_value(str(ckpt)).run()
    scan = write_dicom(tmp_path / "scan.dcm", ultrasound_like(np.random.default_rng(1), 1, 96, 120))
    test.file_uploader[0].set_value([("scan.dcm", scan.read_bytes(), "application/dicom")]).run()
    assert not test.exception and not test.error
    verdicts = [m.value for m in test.main.markdown if " · " in m.value and m.value.startswith("**")]
    assert len(verdicts) == 1 and verdicts[0].split("**")[1] in ("benign", "malignant", "normal")
    assert list(test.dataframe[0].value["path"]) == ["scan.dcm"]


def test_the_app_sends_no_usage_statistics_wherever_it_is_started(trained_run, tmp_path):
    """`busi-app` from a folder without busi's .streamlit/config.toml: Streamlit would otherwise
    announce 'Collecting usage statistics' and send them."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "BUSI_CHECKPOINT": str(trained_run[1] / "checkpoints" / "best.ckpt"), "HOME": str(tmp_path)}
    log = tmp_path / "app.log"
    command = [sys.executable, "-m", "busi.commands.app_launch",
               "--server.headless=true", f"--server.port={port}", "--server.address=127.0.0.1"]  # fmt: skip
    with log.open("w") as handle:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "URL:" not in log.read_text():
                time.sleep(0.5)
        finally:
            server.terminate()
            server.wait(timeout=30)
    shown = log.read_text()
    assert "URL:" in shown, shown
    assert "usage statistics" not in shown.lower(), shown


def test_busi_app_help_is_busis_own_and_comes_before_streamlit(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\nfrom busi.commands.app_launch import main\ntry:\n    main(['--help'])\n"
        "except SystemExit as done:\n    print('exit', done.code, 'streamlit' in sys.modules)"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert finished.stdout.strip().endswith("exit 0 False"), finished.stdout + finished.stderr
    for option in ("--ckpt", "--port", "--address", "$BUSI_CHECKPOINT"):
        assert option in finished.stdout
    assert "No runtime found" not in finished.stderr and "streamlit run" not in finished.stdout.lower()


def test_labels_follow_the_malignant_threshold_given_or_the_one_stored_with_the_model(app, busi_root, monkeypatch):
    test, ckpt = app
    scans = [p for p in sorted((busi_root / "normal").glob("*.png")) if "_mask" not in p.name][:2]
    uploads = [(p.name, p.read_bytes(), "image/png") for p in scans]
    test.sidebar.text_input[0].set_value(str(ckpt)).run()
    (stored,) = [box for box in test.sidebar.checkbox if box.label.startswith("Label malignant from p_malignant ≥")]
    assert not stored.value and "on the validation split" in stored.help
    monkeypatch.setenv("BUSI_MALIGNANT_THRESHOLD", "0")  # busi-app --malignant_threshold 0: every scan reaches it
    test.file_uploader[0].set_value(uploads).run()
    assert not test.exception
    verdicts = [m.value for m in test.main.markdown if " · " in m.value and m.value.startswith("**")]
    assert len(verdicts) == 2 and all(v.startswith("**malignant**") for v in verdicts)
    assert any("given with busi-app --malignant_threshold" in c.value for c in test.sidebar.caption)
