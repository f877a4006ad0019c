"""Lightning's DDP on two CPU processes (gloo): every image is evaluated exactly once."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from busi import CLASS_NAMES
from busi.commands.predict import main as predict_main

from fake_busi import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]


def test_ddp_on_two_cpu_processes_counts_every_image_once(busi_root, tmp_path):
    command = [
        sys.executable, str(REPO / "train.py"), "--model.weights=none",
        f"--data.root={busi_root}", f"--data.image_size={IMAGE_SIZE}", "--data.batch_size=4",
        "--data.val_fraction=0.25", "--data.test_fraction=0.2", "--data.eval_batch_size=2",
        "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Starting with 2 processes" in finished.stderr + finished.stdout
    run_dir = tmp_path / "lightning_logs" / "version_0"
    with (run_dir / "split.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    sizes = {split: sum(row["split"] == split for row in rows) for split in ("train", "val", "test")}
    # odd sizes: a sampler that pads the two processes to equal length would count an image twice
    assert sizes["val"] % 2 == 1 and sizes["test"] % 2 == 1

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [event.value for event in events.Scalars("val/samples")] == [sizes["val"]] * 2

    report = json.loads((run_dir / "report.json").read_text())["splits"]
    assert {split: report[split]["samples"] for split in sizes} == sizes
    test_rows = [row for row in rows if row["split"] == "test"]
    output = tmp_path / "test.csv"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    assert (
        predict_main(["--ckpt", str(ckpt), "--output", str(output), *(str(busi_root / r["path"]) for r in test_rows)])
        == 0
    )
    with output.open(encoding="utf-8") as handle:
        predicted = [row["label"] for row in csv.DictReader(handle)]
    matrix = [[0] * len(CLASS_NAMES) for _ in CLASS_NAMES]
    for row, label in zip(test_rows, predicted, strict=True):
        matrix[CLASS_NAMES.index(row["label"])][CLASS_NAMES.index(label)] += 1
    assert report["test"]["confusion_matrix"] == matrix


def test_prediction_on_two_cpu_processes_writes_the_one_process_csv(trained_run, busi_root, tmp_path):
    _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    folder = tmp_path / "incoming"
    for name in ("benign", "malignant"):
        shutil.copytree(busi_root / name, folder / name)
    (folder / "malignant" / "notes.png").write_text("this is text")  # an error row among the answers
    files = [p for p in folder.rglob("*.png") if "_mask" not in p.name]
    if len(files) % 2 == 0:  # uneven: a sampler that pads the processes would answer one file twice
        (folder / "benign" / "extra (1).png").write_bytes((folder / "benign" / "benign (1).png").read_bytes())
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert predict_main(["--ckpt", str(ckpt), str(folder), "--output", str(one), "--cam", str(tmp_path / "cams1")]) == 0
    command = [
        sys.executable, str(REPO / "predict.py"), "--ckpt", str(ckpt), str(folder), "--output", str(two),
        "--cam", str(tmp_path / "cams2"), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp",
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "predicted, 1 failed" in finished.stdout and "(2 processes)" in finished.stdout
    rows_one, rows_two = (list(csv.DictReader(path.open(encoding="utf-8"))) for path in (one, two))
    assert [(r["path"], r["label"], r["error"]) for r in rows_two] == [
        (r["path"], r["label"], r["error"]) for r in rows_one
    ]
    for a, b in zip(rows_one, rows_two, strict=True):  # batches of other images: float rounding only
        assert all(abs(float(a[k] or 0) - float(b[k] or 0)) <= 2e-6 for k in a if k.startswith("p_"))
    assert sorted(p.name for p in (tmp_path / "cams2").iterdir()) == sorted(
        p.name for p in (tmp_path / "cams1").iterdir()
    )
    assert not list(tmp_path.glob("two.csv.rank*"))  # the parts are merged and gone
