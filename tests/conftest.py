"""Session fixtures: a BUSI-like folder and one real training run on it."""

import os
from pathlib import Path

import pytest

from fake_busi import train_args, write_busi_folder


@pytest.fixture(scope="session", autouse=True)
def image_cache_dir(tmp_path_factory) -> Path:
    """Keep the decoded-image cache of the tests out of the user's ~/.cache."""
    directory = tmp_path_factory.mktemp("image-cache")
    os.environ["BUSI_CACHE_DIR"] = str(directory)
    return directory


@pytest.fixture(scope="session")
def busi_root(tmp_path_factory) -> Path:
    return write_busi_folder(tmp_path_factory.mktemp("busi") / "Dataset_BUSI_with_GT")


@pytest.fixture(scope="session")
def trained_run(busi_root, tmp_path_factory):
    """One real `train.py` run (frozen recipe, no pretrained weights, 64 px, 2 epochs) shared by tests; its
    last.ckpt is kept, for the tests that train it on."""
    from busi.training.run import run

    cli = run(train_args(busi_root, tmp_path_factory.mktemp("runs"), "--resume.keep_when_finished=true", epochs=2))
    return cli, Path(cli.trainer.log_dir)


@pytest.fixture(scope="session")
def segmenting_run(busi_root, tmp_path_factory) -> Path:
    """A real run with the decoder: the frozen default recipe, λ = 1, 64 px, 2 epochs; its folder."""
    from busi.training.run import run

    cli = run(train_args(busi_root, tmp_path_factory.mktemp("seg"), "--model.loss.segmentation_weight=1"))
    return Path(cli.trainer.log_dir)


@pytest.fixture(scope="session")
def conformal_run(busi_root, tmp_path_factory) -> Path:
    """A real run that keeps prediction-set thresholds (miscoverage 0.5: the tiny validation split has
    enough scans of each class for it); its folder."""
    from busi.training.run import run

    cli = run(train_args(busi_root, tmp_path_factory.mktemp("conformal"), "--model.conformal_alpha=0.5"))
    return Path(cli.trainer.log_dir)
