"""Checkpoints that survive crashes, and runs that resume exactly where they stopped."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from busi.errors import ResumeError

RUNS_NAME = "lightning_logs"  # TensorBoardLogger's default: runs/lightning_logs/version_N


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, flushed to disk and renamed over it, so a
    crash while saving leaves the previous file intact. (Lightning's own atomic save stages the file in
    the system temp folder; when that is another file system, the final move is a copy that a crash can
    cut short.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is not
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class ResumeCheckpoint(ModelCheckpoint):
    """Only `last.ckpt`: rewritten after every epoch and when the run is interrupted."""

    def __init__(self):
        super().__init__(save_top_k=0, save_last=True, enable_version_counter=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint writes `last` only alongside a top-k save, and there is none here.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt) or trainer.sanity_checking:
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        rank_zero_info(
            f"Stopped by {type(exception).__name__}: training state saved to {self.last_model_path}; "
            "continue with --ckpt_path last"
        )


def step_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1)[0])


class StepSeed(Callback):
    """The randomness of a training step (dropout, augmentation) depends only on (seed, epoch, batch,
    rank), so a run resumed from an epoch boundary repeats what the uninterrupted run would have done,
    whatever else drew random numbers in between (Lightning creates the first DataLoader iterator of a
    process at another point than the later ones)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        global_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = step_seed(global_seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def find_resume_checkpoint(ckpt_path: str, root_dir: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None) for `last`, a run directory or a checkpoint file."""
    if ckpt_path == "last":
        runs = Path(root_dir) / RUNS_NAME
        candidates = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ResumeError(f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt to resume from")
        ckpt = candidates[-1]
    else:
        ckpt = Path(ckpt_path)
        if ckpt.is_dir():
            ckpt = ckpt / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ResumeError(f"{ckpt}: checkpoint not found; pass RUN/checkpoints/last.ckpt, RUN, or last")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return ckpt, run_dir


# what a weights-only checkpoint fixes about the network it fine-tunes
ARCHITECTURE = ("class_names", "head", "preprocessing", "batch_norm_eps")


def starting_hyperparameters(ckpt: Path) -> dict | None:
    """A weights-only checkpoint's hyperparameters (a run's best.ckpt, an imported model): fine-tuning
    starts from its weights in a new run; None for a training checkpoint (last.ckpt), which resumes."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ResumeError(
            f"{ckpt}: refused: the checkpoint holds pickled objects other than tensors and plain values; "
            "only start from checkpoints written by busi"
        ) from None
    except (RuntimeError, OSError) as error:
        raise ResumeError(f"{ckpt}: not a readable checkpoint ({str(error).splitlines()[0]})") from None
    if "optimizer_states" in state:
        return None
    if not isinstance(state.get("state_dict"), dict) or "hyper_parameters" not in state:
        raise ResumeError(f"{ckpt}: not a busi checkpoint (no state_dict and hyper_parameters)")
    return state["hyper_parameters"]


def load_starting_weights(model: L.LightningModule, ckpt: Path) -> None:
    """Fine-tuning: the checkpoint's weights into `model`, all of them (a lesion decoder the checkpoint
    lacks starts fresh); the temperature is fitted again when the run finishes."""
    state_dict = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    state_dict.pop("temperature", None)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    left_out = [key for key in missing if key != "temperature" and not key.startswith("model.decoder.")]
    if left_out or unexpected:
        key = (left_out or unexpected)[0]
        raise ResumeError(f"{ckpt}: its weights do not fit the model to fine-tune (e.g. {key})")
