"""Checkpoint callbacks of a training run: last.ckpt to resume from (also on SIGTERM; removed once the run
has finished), and per-step seeds that make a resumed run draw what the uninterrupted one drew."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class ResumeCheckpoint(ModelCheckpoint):
    """Only `last.ckpt`, the resume point: rewritten after every epoch and when training is interrupted
    (interrupted during validation, it keeps the end of the epoch before, the point an exact resume needs),
    and removed once the run has finished (`finished`), since it holds the optimiser's state too and is
    several times the size of best.ckpt.

    Args:
        keep_when_finished: keep last.ckpt after the run has finished, to train it on later with
            `--ckpt_path RUN` and more epochs.
    """

    def __init__(self, keep_when_finished: bool = False):
        super().__init__(save_top_k=0, save_last=True, enable_version_counter=False)
        self.keep_when_finished = keep_when_finished

    def finished(self, trainer: L.Trainer) -> None:
        """Called once the fit and the finishing step (calibration, report, best.ckpt) are done."""
        path = Path(self.last_model_path) if self.last_model_path else None
        done = trainer.state.status == TrainerStatus.FINISHED and not trainer.interrupted
        if self.keep_when_finished or not done or not trainer.is_global_zero or path is None or not path.is_file():
            return
        size = path.stat().st_size
        path.unlink()
        rank_zero_info(
            f"removed {path} ({size / 2**20:,.0f} MiB: the resume point, not needed once the run has finished); "
            "keep it with --resume.keep_when_finished true"
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint writes `last` only alongside a top-k save, and there is none here.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        restart_interrupted_validation(checkpoint)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt) or trainer.sanity_checking:
            return
        stopped = f"Stopped by {type(exception).__name__}"
        if trainer.validating:
            # The epoch's training metrics are not in a checkpoint, so its end is resumed from exactly
            # only by training the epoch again: the file of the previous epoch's end is kept.
            if not self.last_model_path:
                rank_zero_info(f"{stopped} in the first epoch's validation: no training state saved yet; start again")
                return
            rank_zero_info(
                f"{stopped} during validation: {self.last_model_path} keeps the end of epoch "
                f"{trainer.current_epoch - 1}; continue with --ckpt_path last"
            )
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        rank_zero_info(f"{stopped}: training state saved to {self.last_model_path}; continue with --ckpt_path last")


def restart_interrupted_validation(checkpoint: dict) -> None:
    """A checkpoint written between two validation batches (by earlier busi versions, or by Lightning's
    OnExceptionCheckpoint: SIGTERM and Ctrl-C are honoured there) resumes with that validation run again
    from its first batch. Its metrics are not in the checkpoint, and Lightning, finding the epoch's
    training batches all done and the validation's completed ones consistent, would skip to the end of
    the epoch without them (EarlyStopping then fails on a missing `val/` metric). The validation's
    progress is rewound to the state Lightning writes when stopped inside its first batch, which it
    restarts."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loop.get("epoch_loop.val_loop.batch_progress")
    if not progress or progress.get("is_last_batch", True):
        return
    done = progress["current"]["completed"]
    if done == 0 or any(progress["current"][key] != done for key in ("ready", "started", "processed")):
        return
    for counts in (progress["total"], progress["current"]):
        counts["completed"] = counts["processed"] = counts["completed"] - done
        counts["ready"] = counts["started"] = counts["completed"] + 1


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
