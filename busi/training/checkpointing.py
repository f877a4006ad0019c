"""Checkpoints that survive crashes, and runs that resume exactly where they stopped."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

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


def find_resume_checkpoint(ckpt_path: str, root_dir: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None) for `last`, a run directory or a checkpoint file."""
    if ckpt_path == "last":
        runs = Path(root_dir) / RUNS_NAME
        candidates = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            finished = " (a finished run's is removed unless it ran with --resume.keep_when_finished true)"
            raise ResumeError(f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt to resume from{finished}")
        ckpt = candidates[-1]
    else:
        ckpt = Path(ckpt_path)
        if ckpt.is_dir():
            ckpt = ckpt / "checkpoints" / "last.ckpt"
        if not ckpt.is_file() and ckpt.name == "last.ckpt" and (ckpt.parent / "best.ckpt").is_file():
            raise ResumeError(
                f"{ckpt}: not found: that run finished and its resume point was removed; train on from its "
                f"weights in a new run with --ckpt_path {ckpt.parent / 'best.ckpt'}, or keep last.ckpt next time "
                "with --resume.keep_when_finished true"
            )
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
