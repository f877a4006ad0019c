"""Long commands show a progress bar (images/s, time left) on a terminal, and write no carriage-return
spam into piped output or logs."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.predict_progress import run_on_terminal

REPO = Path(__file__).resolve().parents[1]


def stderr_of(command: list[str], terminal: bool) -> str:
    """The command's stderr, read from a pseudo-terminal (as a person at a terminal sees it) or a pipe."""
    if terminal:
        return run_on_terminal(command)[0]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300).stderr


@pytest.fixture(scope="module")
def predict_command(trained_run, busi_root, tmp_path_factory) -> list[str]:
    output = tmp_path_factory.mktemp("progress") / "predictions.csv"
    ckpt = trained_run[1] / "checkpoints" / "best.ckpt"
    return [sys.executable, "predict.py", "--ckpt", str(ckpt), str(busi_root / "benign"), "--output", str(output)]


def test_a_terminal_gets_a_bar_with_images_per_second(predict_command):
    drawn = stderr_of(predict_command, terminal=True)
    assert "\r" in drawn and "image/s" in drawn and "predict" in drawn


def test_piped_output_and_quiet_runs_have_no_bar(predict_command):
    piped = stderr_of(predict_command, terminal=False)
    assert "\r" not in piped and "image/s" not in piped
    assert "\r" not in stderr_of([*predict_command, "--quiet"], terminal=True)
