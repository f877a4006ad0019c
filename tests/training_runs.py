"""Training runs as the resume tests start, kill and compare them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from busi.evaluation.history import EPOCH_SECONDS

from fake_busi import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]
LAST = "lightning_logs/version_0/checkpoints/last.ckpt"


def scratch_args(root: Path, runs: Path, epochs: int) -> list[str]:
    """The whole network trains: dropout, BatchNorm, augmentation and the shuffle all matter to the result."""
    return [
        "--config", str(REPO / "configs" / "scratch.yaml"), "--model.augmentation.enabled=true",
        f"--data.root={root}", f"--data.image_size={IMAGE_SIZE}", "--data.batch_size=4",
        "--data.eval_batch_size=2",  # validation in several batches, to be stopped between them
        f"--trainer.max_epochs={epochs}", "--trainer.deterministic=true", "--seed_everything=7",
        f"--trainer.default_root_dir={runs}", "--trainer.enable_progress_bar=false",
        "--resume.keep_when_finished=true",  # compared with the interrupted runs
    ]  # fmt: skip


def start_training(args: list[str], log: Path) -> subprocess.Popen:
    """train.py in its own process; it can load callbacks from this folder (`training_runs.…`)."""
    path = os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], stdout=handle, stderr=handle, env=env)


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training exited early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # also proves: tensors and plain values only


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())["splits"]


def without_times(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != EPOCH_SECONDS} for row in history]


class TerminateDuringValidation(Callback):
    """Sends its own process SIGTERM after the first validation batch of epoch 1, as a scheduler would
    at any moment: Lightning then stops before the second batch."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.current_epoch == 1 and batch_idx == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)
