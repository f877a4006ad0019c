"""EpochHistory: every epoch's metrics into history.csv (curves.png and the training cost read it)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from busi.evaluation.history import EPOCH_SECONDS, read_history, write_history


class EpochHistory(Callback):
    """At the end of every training epoch, the epoch's train/ and val/ metrics and its wall time join
    RUN/history.csv; a resumed run keeps the rows of the epochs it finished before and replaces the rest."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()  # a run resumed inside an epoch starts it without the hook below

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        if not trainer.is_global_zero or log_dir is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1  # counted from 1, as the report and the curves count
        row = {"epoch": epoch, EPOCH_SECONDS: time.monotonic() - self._started}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")):
                row[key] = float(value)
        history = [entry for entry in read_history(Path(log_dir)) if entry["epoch"] < epoch]
        write_history(Path(log_dir), [*history, row])
