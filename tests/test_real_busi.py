"""One short epoch on the real BUSI folder (../shared/data/busi or $BUSI_ROOT), its Grad-CAM scores and its
ONNX export on real scans; skipped when the folder is absent."""

import csv
import json
from collections import defaultdict

import pytest
import torch

from busi import CLASS_NAMES
from busi.commands.export import main as export_main
from busi.io.images import as_three_channels, is_mask, load_image
from busi.model.classifier import load_classifier
from busi.training.cli import DEFAULT_CONFIG
from busi.training.run import run

from fake_busi import real_busi_root

REAL_ROOT = real_busi_root()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REAL_ROOT is None, reason="BUSI not found: set BUSI_ROOT or place ../shared/data/busi"),
]


def test_short_scratch_epoch_on_real_busi(tmp_path):
    cli = run(
        [
            "--config", str(DEFAULT_CONFIG.parent / "scratch.yaml"),
            f"--data.root={REAL_ROOT}",
            "--data.eval_batch_size=16",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert cli.trainer.log_dir == str(run_dir)
    with (run_dir / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    images_on_disk = {
        p.relative_to(REAL_ROOT).as_posix()
        for c in CLASS_NAMES
        for p in (REAL_ROOT / c).glob("*.png")
        if not is_mask(p)
    }
    audit = json.loads((run_dir / "audit.json").read_text())
    assert {row["path"] for row in rows} | {u["path"] for u in audit["unreadable"]} == images_on_disk
    splits_of_group = defaultdict(set)
    for row in rows:
        splits_of_group[row["group"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    for split, per_class in audit["splits"].items():
        assert all(per_class[name] > 0 for name in CLASS_NAMES), split
    assert all(len(set(conflict["labels"])) > 1 for conflict in audit["conflicting_labels"])
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["splits"]) == {"train", "val", "test"}
    assert report["localisation"]["per_class"]["malignant"]["images"] > 0  # Grad-CAM scored against the masks

    onnxruntime = pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "busi.onnx"
    assert export_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), "--output", str(onnx_file)]) == 0
    classifier = load_classifier(run_dir / "checkpoints" / "best.ckpt")
    paths = [REAL_ROOT / row["path"] for row in rows[:: len(rows) // 8]]
    pixels = torch.stack([as_three_channels(load_image(p, 256)) for p in paths])
    with torch.no_grad():
        expected = classifier.infer(pixels).probabilities.numpy()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"pixels": pixels.float().numpy()})
    assert abs(probabilities - expected).max() < 1e-4
