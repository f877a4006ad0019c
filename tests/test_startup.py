"""Every command's --help and option errors come before torch and Lightning are imported, so they take a
fraction of a second (measured: benchmarks/command_startup.py), not the seconds those imports take."""

import subprocess
import sys

import pytest

PROBE = """
import sys
from busi.commands.{module} import main
try:
    code = main({argv!r})
except SystemExit as exit:
    code = exit.code
print("exit", code, "torch" in sys.modules, "lightning" in sys.modules)
"""

CASES = [
    ("predict", ["--help"], 0),
    ("predict", ["scan.png"], 2),  # no --ckpt
    ("evaluate", ["--help"], 0),
    ("evaluate", ["--ckpt", "x.ckpt"], 2),  # no --data.root
    ("cv", ["--help"], 0),
    ("cv", ["--folds", "2"], 2),
    ("cv", ["--folds", "5", "--only_folds", "7"], 2),
    ("pretrain", ["--help"], 0),
    ("pretrain", ["--data.root", "d", "--pretraining.epochs", "0"], 2),
    ("pretrain", ["--data.root", "d", "--pretraining.epochs", "2", "--pretraining.crop_scale", "0"], 2),
    ("explain", ["--help"], 0),
    ("explain", ["--ckpt", "x.ckpt", "--data.root", "d", "--split", "some"], 2),
    ("export", ["--help"], 0),
    ("export", ["--ckpt", "x.ckpt", "--format", "tflite"], 2),
    ("cache", ["--help"], 0),
    ("download", ["--help"], 0),
    ("import_keras", ["--help"], 0),
    ("import_keras", ["model.h5", "--output", "out", "--class_names", "[a, a, b]"], 2),
    ("app_launch", ["--help"], 0),
    ("serve", ["--help"], 0),
    ("serve", ["--ckpt", "x.ckpt", "--max_batch_size", "0"], 2),
    ("serve", ["--ckpt", "x.ckpt", "--malignant_threshold", "2"], 2),
]


@pytest.mark.parametrize("module, argv, code", CASES, ids=[f"{m} {' '.join(a)}" for m, a, _ in CASES])
def test_help_and_option_errors_come_before_torch_is_imported(module, argv, code):
    probe = PROBE.format(module=module, argv=argv)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == f"exit {code} False False", result.stderr[-2000:]
    if code:
        assert "error" in result.stderr.lower()


def test_busi_app_refuses_a_malignant_threshold_outside_0_to_1_before_streamlit_loads():
    probe = PROBE.format(module="app_launch", argv=["--malignant_threshold", "7"])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "exit 2 False False"
    assert "--malignant_threshold 7" in result.stderr and "streamlit" not in result.stdout
