"""The per-epoch training and validation metrics of a run, recorded by busi itself in RUN/history.csv
(whatever loggers the run has): what curves.png and the cross-validation curves are drawn from."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

HISTORY_FILE = "history.csv"


def read_history(run_dir: Path) -> list[dict]:
    """Per epoch (from 0): {"epoch": n, "train/loss": …, "val/macro_f1": …}; [] when nothing was recorded."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {"epoch": int(row["epoch"]), **{key: float(value) for key, value in row.items() if key != "epoch" and value}}
        for row in rows
    ]


def write_history(run_dir: Path, history: list[dict]) -> None:
    keys = sorted({key for row in history for key in row if key != "epoch"})
    path = Path(run_dir) / HISTORY_FILE
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["epoch", *keys])
        writer.writeheader()
        writer.writerows(history)
    temporary.replace(path)


class EpochHistory(Callback):
    """At the end of every training epoch, the epoch's train/ and val/ metrics join RUN/history.csv; a
    resumed run keeps the rows of the epochs it finished before and replaces the rest."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        if not trainer.is_global_zero or log_dir is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        row = {"epoch": epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")):
                row[key] = float(value)
        history = [entry for entry in read_history(Path(log_dir)) if entry["epoch"] < epoch]
        write_history(Path(log_dir), [*history, row])
