"""The web app in a real browser: `streamlit run` in a subprocess, Debian's chromium driven by selenium.
Skipped, with the reason, where no chromium/chromedriver is installed (`.ci/run` installs them)."""

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from busi.commands.app import MAX_UPLOAD_MB, percent
from busi.commands.predict import main as predict_main

REPO = Path(__file__).resolve().parents[1]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (BROWSER and DRIVER), reason="no chromium and chromedriver: apt-get install chromium chromium-driver"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(trained_run, tmp_path):
    """`streamlit run busi/commands/app.py` from the repository root, with the test run's checkpoint."""
    yield from serve_app(trained_run[1] / "checkpoints" / "best.ckpt", tmp_path)


@pytest.fixture
def served_segmenting(segmenting_run, tmp_path):
    """The app with the checkpoint of a run with the lesion decoder."""
    yield from serve_app(segmenting_run / "checkpoints" / "best.ckpt", tmp_path)


@pytest.fixture
def served_with_sets(conformal_run, tmp_path):
    """The app with the checkpoint of a run that keeps prediction-set thresholds."""
    yield from serve_app(conformal_run / "checkpoints" / "best.ckpt", tmp_path)


def serve_app(ckpt: Path, tmp_path: Path):
    port = free_port()
    env = {**os.environ, "BUSI_CHECKPOINT": str(ckpt)}
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "busi/commands/app.py", "--server.headless=true", f"--server.port={port}",
         "--browser.gatherUsageStats=false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", env["BUSI_CHECKPOINT"]
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2400"):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.downloads = downloads
    yield driver
    driver.quit()


def predict_py_row(ckpt: str, image: Path, folder: Path) -> tuple[dict, list[str]]:
    """predict.py's CSV row for `image`, and its probabilities as the app writes them."""
    expected_csv = folder / f"{image.stem}-expected.csv"
    assert predict_main(["--ckpt", ckpt, str(image), "--output", str(expected_csv)]) == 0
    with expected_csv.open(encoding="utf-8") as handle:
        expected = next(csv.DictReader(handle))
    return expected, [f"{name}: {percent(float(expected[f'p_{name}']))}" for name in ("benign", "malignant", "normal")]


def open_app(browser, url: str) -> WebDriverWait:
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    return wait


def upload(browser, wait: WebDriverWait, files: list[Path], pieces: list[str]) -> str:
    """Upload `files` and return the page's text once every one of `pieces` is on it (Streamlit renders
    results piece by piece)."""
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys("\n".join(map(str, files)))
    wait.until(lambda driver: all(piece in driver.find_element(By.TAG_NAME, "body").text for piece in pieces))
    return browser.find_element(By.TAG_NAME, "body").text


def test_a_browser_upload_shows_predict_py_numbers_and_downloads_its_csv(served, browser, busi_root, tmp_path):
    url, ckpt = served
    good = busi_root / "malignant" / "malignant (2).png"
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    expected, shown = predict_py_row(ckpt, good, tmp_path)
    wait = open_app(browser, url)
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Research tool, not a medical device" in page and f"{MAX_UPLOAD_MB}MB per file" in page
    assert "Deploy" not in page
    page = upload(browser, wait, [good, bad], [*shown, "notes.png: not a readable image", "Download the overlays"])
    assert f"**{expected['label']}**" not in page and expected["label"] in page
    assert "notes.png: not a readable image" in page

    button = next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Download the table" in b.text)
    button.click()
    deadline = time.monotonic() + 30
    while not list(browser.downloads.glob("*.csv")) and time.monotonic() < deadline:
        time.sleep(0.3)
    (downloaded,) = browser.downloads.glob("*.csv")
    with downloaded.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [good.name, bad.name]
    for name in ("p_benign", "p_malignant", "p_normal"):
        assert float(rows[0][name]) == pytest.approx(float(expected[name]), abs=1e-6)
    assert rows[1]["label"] == "" and "not a readable image" in rows[1]["error"]

    shots = Path(os.environ.get("BUSI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script(  # Streamlit scrolls inside its main section, not the body
        "return Math.max(...[...document.querySelectorAll('section, div')].map(e => e.scrollHeight))"
    )
    browser.set_window_size(1400, min(height + 100, 6000))
    time.sleep(1)  # the layout settles at the new size
    assert browser.save_screenshot(str(shots / "app.png"))


def test_a_browser_accepts_a_dicom_upload(served, browser, tmp_path):
    pytest.importorskip("pydicom")
    import numpy as np

    from fake_busi import ultrasound_like
    from fake_dicom import write_dicom

    url, ckpt = served
    scan = write_dicom(tmp_path / "scan.dcm", ultrasound_like(np.random.default_rng(2), 0, 96, 120))
    _, shown = predict_py_row(ckpt, scan, tmp_path)
    assert "scan.dcm" in upload(browser, open_app(browser, url), [scan], shown)


def full_page_screenshot(browser, name: str, tmp_path: Path) -> Path:
    shots = Path(os.environ.get("BUSI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script(
        "return Math.max(...[...document.querySelectorAll('section, div')].map(e => e.scrollHeight))"
    )
    browser.set_window_size(1400, min(height + 100, 6000))
    time.sleep(1)
    assert browser.save_screenshot(str(shots / name))
    return shots / name


def test_a_browser_shows_the_predicted_lesions_size_in_millimetres(served_segmenting, browser, busi_root, tmp_path):
    pytest.importorskip("pydicom")
    import numpy as np
    from PIL import Image

    from fake_dicom import write_dicom

    url, _ = served_segmenting
    pixels = np.asarray(Image.open(busi_root / "malignant" / "malignant (1).png").convert("L"))
    scan = write_dicom(tmp_path / "lesion.dcm", pixels, region=(0, 0, pixels.shape[1] - 1, pixels.shape[0] - 1))
    page = upload(browser, open_app(browser, url), [scan], ["lesion.dcm", "Predicted lesion", " mm, area "])
    assert "mm²" in page and "depth/width" in page
    full_page_screenshot(browser, "app_lesion.png", tmp_path)


def test_a_browser_shows_the_prediction_set_and_when_to_refer(served_with_sets, browser, busi_root, tmp_path):
    url, ckpt = served_with_sets
    scans = [p for p in sorted((busi_root / "benign").glob("*.png")) if "_mask" not in p.name][:3]
    expected = tmp_path / "expected.csv"
    assert predict_main(["--ckpt", ckpt, *map(str, scans), "--output", str(expected)]) == 0
    with expected.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    shown = []  # what the page must say for each scan: the set as busi-predict gives it
    for row in rows:
        members = row["prediction_set"].replace("|", " or ")
        shown.append(f"Prediction set: {members}" + (": unsure, refer" if row["refer"] == "yes" else " only"))
    page = upload(browser, open_app(browser, url), scans, shown)
    assert "Prediction sets: every class the scan may be" in page
    full_page_screenshot(browser, "app_prediction_set.png", tmp_path)
