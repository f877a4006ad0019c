import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from busi import CLASS_NAMES
from busi.evaluation.history import read_history, write_history
from busi.evaluation.plots import confusion_matrix_figure, curves_figure, fold_curves_figure
from busi.evaluation.report import format_report
from busi.model.metrics import reliability

PICTURES = ("confusion_matrix.png", "reliability.png", "curves.png")


def test_every_run_directory_holds_the_report_and_its_three_pictures(trained_run):
    cli, run_dir = trained_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report == cli.report
    assert (run_dir / "report.txt").read_text() == format_report(report) + "\n"
    for name in PICTURES:
        with Image.open(run_dir / name) as picture:
            pixels = np.asarray(picture.convert("L"))
        assert picture.width >= 400 and picture.height >= 300, name
        assert pixels.std() > 10, f"{name} is blank"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"test/confusion_matrix", "test/reliability_diagram", "test/curves"} <= set(events.Tags()["images"])


def test_training_curves_come_from_every_epoch_busi_recorded(trained_run):
    """history.csv, which busi writes itself whatever the loggers, holds what TensorBoard was sent."""
    cli, run_dir = trained_run
    history = read_history(run_dir)
    assert [row["epoch"] for row in history] == list(range(1, cli.trainer.max_epochs + 1))  # as report.txt counts
    for row in history:
        assert {"train/loss", "train/acc", "train/macro_f1", "val/loss", "val/acc", "val/macro_f1"} <= row.keys()
        assert 0 <= row["val/macro_f1"] <= 1 and row["train/loss"] > 0
    best = torch.load(run_dir / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert max(history, key=lambda row: row["val/macro_f1"])["epoch"] == best["epoch"] + 1  # Lightning's from 0
    train_images = cli.report["splits"]["train"]["samples"]
    assert [row["train/samples"] for row in history] == [train_images] * len(history)
    assert all(row["time/epoch_s"] > 0 for row in history)
    cost = cli.report["training"]
    assert cost["epochs"] == len(history) and cost["best_epoch"] == best["epoch"] + 1
    assert cost["images_seen"] == train_images * len(history)
    assert cost["images_seen_to_best"] == train_images * cost["best_epoch"]
    assert cost["wall_s"] == pytest.approx(sum(row["time/epoch_s"] for row in history))
    assert (
        f"Training: {len(history)} epochs, best at epoch {cost['best_epoch']}, {cost['images_seen']:,.0f} images drawn"
        in format_report(cli.report)
    )
    events = EventAccumulator(str(run_dir))
    events.Reload()
    sent = [event.value for event in events.Scalars("val/macro_f1")]
    assert sent == pytest.approx([row["val/macro_f1"] for row in history])


def test_reliability_bins_count_images_and_average_confidence_and_accuracy():
    rows = reliability(torch.tensor([0.05, 0.55, 0.58, 0.99, 1.0]), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
    assert len(rows) == 10 and [row["images"] for row in rows] == [1, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert rows[0]["confidence"] == pytest.approx(0.05) and rows[0]["accuracy"] == 1.0
    assert rows[5]["confidence"] == pytest.approx(0.565) and rows[5]["accuracy"] == 0.5
    assert rows[9]["confidence"] == pytest.approx(0.995) and rows[9]["accuracy"] == 0.5  # 1.0 falls in the last bin
    assert rows[1]["confidence"] is None and rows[1]["accuracy"] is None


def test_confusion_matrix_picture_shows_counts_and_row_shares():
    figure = confusion_matrix_figure([[3, 1, 0], [0, 2, 2], [0, 0, 5]], CLASS_NAMES, "test")
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels[:3] == ["3\n75%", "1\n25%", "0\n0%"] and labels[-1] == "5\n100%"
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == list(CLASS_NAMES)


def test_loss_curves_are_logarithmic_so_an_early_spike_leaves_the_later_epochs_readable():
    history = [
        {"epoch": epoch, "train/loss": loss, "val/loss": loss, "val/macro_f1": 0.5}
        for epoch, loss in enumerate([1.2, 36.0, 0.9, 0.8, 0.75])
    ]
    for figure in (curves_figure(history, "run"), fold_curves_figure({0: history, 1: history})):
        loss_axes = figure.axes[0]
        assert loss_axes.get_title().endswith("loss") and loss_axes.get_yscale() == "log"
        assert all(axes.get_yscale() == "linear" for axes in figure.axes[1:])


def test_an_older_history_counted_from_0_is_read_from_1_like_every_other_epoch_count(tmp_path):
    write_history(tmp_path, [{"epoch": epoch, "val/macro_f1": 0.5} for epoch in range(3)])
    assert [row["epoch"] for row in read_history(tmp_path)] == [1, 2, 3]
    write_history(tmp_path, [{"epoch": epoch, "val/macro_f1": 0.5} for epoch in range(1, 4)])
    assert [row["epoch"] for row in read_history(tmp_path)] == [1, 2, 3]
