"""The per-epoch training and validation metrics of a run, recorded by busi itself in RUN/history.csv
(whatever loggers the run has): what curves.png and the cross-validation curves are drawn from.
Epochs count from 1 everywhere busi writes them (history.csv, report.json, report.txt, the curves);
Lightning's own checkpoint field `epoch` counts from 0."""

from __future__ import annotations

import csv
from pathlib import Path

HISTORY_FILE = "history.csv"
SAMPLES = "train/samples"  # the images drawn in the epoch (an oversampled epoch draws some several times)
EPOCH_SECONDS = "time/epoch_s"  # the epoch's training and validation, wall clock


def read_history(run_dir: Path) -> list[dict]:
    """Per epoch (from 1): {"epoch": n, "train/loss": …, "val/macro_f1": …}; [] when nothing was recorded.
    An older history.csv, which counted from 0, is read in the same count."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    offset = 1 if rows and int(rows[0]["epoch"]) == 0 else 0  # the first epoch is 0 in an older file
    return [
        {
            "epoch": int(row["epoch"]) + offset,
            **{key: float(value) for key, value in row.items() if key != "epoch" and value},
        }
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


def training_cost(history: list[dict], best_epoch: int) -> dict:
    """What a model cost to train, from its history: epochs, images drawn in all and up to the best
    epoch (the one kept, counted from 1), wall seconds; None for what the history does not hold."""

    def total(key: str, epochs: list[dict]) -> float | None:
        return sum(row[key] for row in epochs) if all(key in row for row in epochs) else None

    up_to_best = [row for row in history if row["epoch"] <= best_epoch]
    return {
        "epochs": len(history),
        "best_epoch": best_epoch,
        "images_seen": total(SAMPLES, history),
        "images_seen_to_best": total(SAMPLES, up_to_best),
        "wall_s": total(EPOCH_SECONDS, history),
    }


def format_training_cost(cost: dict) -> str:
    seen = cost["images_seen"]
    images = f", {seen:,.0f} images drawn ({cost['images_seen_to_best']:,.0f} up to it)" if seen is not None else ""
    wall = f", {cost['wall_s'] / 60:.1f} min" if cost["wall_s"] is not None else ""
    epochs = f"{cost['epochs']} epoch" + ("s" if cost["epochs"] != 1 else "")
    return f"{epochs}, best at epoch {cost['best_epoch']}{images}{wall}"
