"""The web app in headless Chromium (Debian's chromium + chromedriver, selenium): how long uploads take
to show, and how long adding one more file takes once they are shown (earlier files come from the
cache). Saves a full-page screenshot.

`python -m benchmarks.app_timing --ckpt CKPT --screenshot app.png IMAGE [IMAGE …]` (the last image is
the one added afterwards).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parent.parent


def shown(driver, count: int) -> bool:
    text = driver.find_element(By.TAG_NAME, "body").text
    return "Download the overlays" in text and text.count("Calibrated probabilities") + text.count(": not a") >= count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path, default=Path("app.png"))
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "busi/commands/app.py", "--server.headless=true", f"--server.port={port}"],
        cwd=REPO, env={**os.environ, "BUSI_CHECKPOINT": str(args.ckpt.resolve())},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
    try:
        time.sleep(5)
        driver.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(driver, 300, poll_frequency=0.1)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        first, added = args.images[:-1], args.images[-1]
        start = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys("\n".join(str(p.resolve()) for p in first))
        wait.until(lambda d: shown(d, len(first)))
        upload_seconds = time.perf_counter() - start
        chooser = driver.find_element(By.CSS_SELECTOR, "input[type=file]")
        driver.execute_script("arguments[0].value = '';", chooser)  # else the browser sends the first files again
        start = time.perf_counter()
        chooser.send_keys(str(added.resolve()))
        wait.until(lambda d: shown(d, len(first) + 1))
        added_seconds = time.perf_counter() - start
        print(
            f"{len(first)} uploads shown after {upload_seconds:.1f} s; one more file shown after {added_seconds:.1f} s"
        )
        height = driver.execute_script(
            "return Math.max(...[...document.querySelectorAll('section, div')].map(e => e.scrollHeight))"
        )
        driver.set_window_size(1400, min(height + 100, 12000))
        time.sleep(2)
        driver.save_screenshot(str(args.screenshot))
    finally:
        driver.quit()
        server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
