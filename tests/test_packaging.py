"""An installed wheel (not the checkout) trains exactly like the checkout: configs, commands and all."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from busi.training.cli import DEFAULT_CONFIG

from fake_busi import IMAGE_SIZE

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("busi-train", "busi-predict", "busi-evaluate", "busi-cv", "busi-explain", "busi-export", "busi-cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """busi built as a wheel and installed (without dependencies: they are this environment's) into a
    folder of its own."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(work)],
        check=True,
        capture_output=True,
    )
    (wheel,) = work.glob("busi-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"busi/configs/{recipe}.yaml" for recipe in ("default", "scratch", "finetune")} <= set(names)
    assert not any(name.startswith(("benchmarks/", "tests/")) for name in names)
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def command(installed: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH puts the installed copy ahead of this checkout's editable install
    env = {**os.environ, "PYTHONPATH": str(installed), "BUSI_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([str(installed / "bin" / name), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_wheel_installs_every_command_and_its_print_config_shows_the_default_recipe(installed, tmp_path):
    for name in COMMANDS:
        assert (installed / "bin" / name).is_file(), name
    shown = command(installed, "busi-train", "--print_config", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    config, default = yaml.safe_load(shown.stdout), yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert config["trainer"]["max_epochs"] == default["trainer"]["max_epochs"] == 10
    assert config["trainer"]["default_root_dir"] == "runs"
    assert config["model"]["weights"] == "imagenet" and config["model"]["freeze_backbone"] is True
    monitors = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in monitors
    assert config["checkpoint"]["monitor"] == "val/macro_f1"


def test_the_wheel_trains_a_packaged_recipe_by_name_from_an_unrelated_folder(installed, busi_root, tmp_path):
    trained = command(
        installed, "busi-train", "--config", "scratch", f"--data.root={busi_root}", f"--data.image_size={IMAGE_SIZE}",
        "--data.batch_size=8", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["weights"] == "none" and config["model"]["optimizer"]["name"] == "adamw"  # scratch.yaml
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "report.json").is_file()
