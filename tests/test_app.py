"""The Streamlit app, driven headless by Streamlit's AppTest with a real checkpoint and real uploads."""

import io
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "busi" / "app.py"


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


def test_uploads_get_a_class_probabilities_and_a_heat_map_and_bad_ones_a_message(app, busi_root):
    test, ckpt = app
    test.sidebar.text_input[0].set_value(str(ckpt)).run()
    assert not test.exception and not test.error
    good = [p for p in sorted((busi_root / "malignant").glob("*.png")) if "_mask" not in p.name][:2]
    uploads = [(p.name, p.read_bytes(), "image/png") for p in good]
    uploads += [
        ("empty.png", b"", "image/png"),
        ("notes.png", b"not an image at all", "image/png"),
        ("huge.png", png_bytes(Image.new("L", (10_000, 10_000))), "image/png"),
    ]
    test.file_uploader[0].set_value(uploads).run()
    assert not test.exception
    assert [s.value for s in test.subheader] == [name for name, _, _ in uploads]
    errors = [e.value for e in test.error]
    assert len(errors) == 3
    assert errors[0] == "empty.png: empty file (0 bytes)"
    assert "notes.png" in errors[1] and "unknown or unsupported format" in errors[1]
    assert "huge.png" in errors[2] and "too large to decode safely" in errors[2]
    verdicts = [m.value for m in test.markdown if "with probability" in m.value]
    assert len(verdicts) == len(good)
    assert all(v.split("**")[1] in ("benign", "malignant", "normal") for v in verdicts)
    assert len(test.get("vega_lite_chart")) == len(good)  # the probability bar charts
    assert len(test.get("image")) == len(good)  # the Grad-CAM overlays


def test_a_missing_checkpoint_shows_the_reason(app, tmp_path):
    test, _ = app
    test.sidebar.text_input[0].set_value(str(tmp_path / "nowhere.ckpt")).run()
    assert not test.exception
    assert "checkpoint not found" in test.error[0].value
