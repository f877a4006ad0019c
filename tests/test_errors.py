"""One error path: every command prints a UserError as one `error: …` line and exits 2; a run checks its
data folder before it builds the network or fetches weights, and Lightning's advertisements stay out."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from busi.commands.cache import main as cache_main
from busi.commands.cv import main as cv_main
from busi.commands.download import main as download_main
from busi.commands.evaluate import main as evaluate_main
from busi.commands.explain import main as explain_main
from busi.commands.export import main as export_main
from busi.commands.import_keras import main as import_main
from busi.commands.predict import main as predict_main
from busi.commands.train import main as train_main
from busi.data.module import BusiDataModule
from busi.model.classifier import BusiClassifier
from busi.training.cli import DEFAULT_CONFIG, BusiCLI

from fake_busi import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]


def commands(tmp_path: Path) -> dict:
    missing_ckpt, missing_root = str(tmp_path / "none.ckpt"), str(tmp_path / "no-data")
    return {
        "busi-train": (train_main, [f"--data.root={missing_root}", "--model.weights=none"], "data folder not found"),
        "busi-cv": (cv_main, ["--folds", "2", f"--data.root={missing_root}"], "--folds must be at least 3"),
        "busi-predict": (predict_main, ["--ckpt", missing_ckpt, str(tmp_path)], "checkpoint not found"),
        "busi-evaluate": (evaluate_main, ["--ckpt", missing_ckpt, "--data.root", missing_root], "checkpoint not found"),
        "busi-explain": (explain_main, ["--ckpt", missing_ckpt, "--data.root", missing_root], "checkpoint not found"),
        "busi-export": (export_main, ["--ckpt", missing_ckpt], "checkpoint not found"),
        "busi-cache": (cache_main, [f"--data.root={missing_root}"], "data folder not found"),
        "busi-download": (
            download_main,
            ["--data.root", missing_root, "--url", "http://127.0.0.1:9/x.zip"],
            "could not download",
        ),
        "busi-import-keras": (import_main, [str(tmp_path / "model.h5"), "--output", missing_root], "file not found"),
    }


@pytest.mark.parametrize(
    "command",
    [
        "busi-train",
        "busi-cv",
        "busi-predict",
        "busi-evaluate",
        "busi-explain",
        "busi-export",
        "busi-cache",
        "busi-download",
        "busi-import-keras",
    ],
)
def test_every_command_reports_what_to_change_in_one_line_and_exits_2(command, tmp_path, capsys):
    main, args, expected = commands(tmp_path)[command]
    assert main(args) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], errors


@pytest.mark.parametrize("recipe", [[], ["--config", "scratch"]])
def test_a_run_without_its_data_names_the_folder_before_the_weights(recipe, tmp_path):
    """The default recipe fetches ImageNet weights, which this machine lacks: the missing folder is
    still what the user hears about, first and alone."""
    environment = {"TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"}
    finished = subprocess.run(
        [sys.executable, "train.py", *recipe, "--data.root", str(tmp_path / "data" / "Dataset_BUSI_with_GT")],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "data folder not found" in finished.stderr
    assert "ImageNet" not in finished.stdout + finished.stderr


def test_lightning_advertisements_are_kept_out_of_the_output(busi_root, tmp_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        BusiCLI(BusiClassifier, BusiDataModule, run=False, args=[
            "--config", str(DEFAULT_CONFIG), "--model.weights=none", f"--data.root={busi_root}",
            f"--data.image_size={IMAGE_SIZE}", f"--trainer.default_root_dir={tmp_path}",
        ])  # fmt: skip
    finally:
        logger.removeHandler(handler)
    messages = [str(record.msg) for record in records]
    assert any(message.startswith("precision:") for message in messages)  # busi's own lines still arrive
    assert not any("💡" in message for message in messages), messages
