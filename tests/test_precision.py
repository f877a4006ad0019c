"""Mixed precision: when bf16 is chosen, where float32 is kept, and that reports stay float32."""

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from busi import CLASS_NAMES
from busi.commands.predict import main as predict_main
from busi.data.module import BusiDataModule
from busi.model.answering import cpu_has_native_bf16
from busi.model.classifier import BusiClassifier
from busi.training.cli import DEFAULT_CONFIG, BusiCLI, choose_precision
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args

SCRATCH = str(DEFAULT_CONFIG.parent / "scratch.yaml")


def cli_for(busi_root: Path, tmp_path: Path, *extra: str) -> BusiCLI:
    return BusiCLI(BusiClassifier, BusiDataModule, run=False, args=[
        "--model.weights=none", f"--data.root={busi_root}", f"--data.image_size={IMAGE_SIZE}",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu", *extra,
    ])  # fmt: skip


def test_full_network_training_on_a_cpu_uses_bf16_where_the_cpu_has_it(busi_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        cli = cli_for(busi_root, tmp_path, "--config", SCRATCH)
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert cli.trainer.precision == expected
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(notices) == 1 and expected in notices[0] and "--trainer.precision" in notices[0]


def test_the_frozen_recipe_and_an_explicit_precision_stay_as_asked(busi_root, tmp_path):
    assert cli_for(busi_root, tmp_path).trainer.precision == "32-true"  # frozen: features are cached in fp32
    forced = cli_for(busi_root, tmp_path, "--config", SCRATCH, "--trainer.precision=32-true")
    assert forced.trainer.precision == "32-true"
    assert choose_precision("cpu", freeze_backbone=True)[0] == "32-true"


def test_the_head_runs_in_float32_inside_bf16_autocast():
    torch.manual_seed(0)
    model = BusiClassifier(weights=None, freeze_backbone=False, image_size=IMAGE_SIZE).train()
    images = model.prepare_inputs(torch.randint(0, 256, (4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.model.extract(images)
        logits = model.model.head(features)
        torch.manual_seed(1)
        mixed = model(images)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_features = model.model.extract(images)
    torch.manual_seed(1)  # the same dropout masks
    head_in_fp32 = model.model.head(bf16_features.float())
    assert torch.equal(mixed, head_in_fp32)
    F.cross_entropy(mixed, torch.arange(4) % 3).backward()
    assert model.model.head[1].weight.grad.dtype == torch.float32


def predicted_probabilities(run_dir: Path, root: Path, tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with (run_dir / "split.csv").open() as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    output = tmp_path / "predictions.csv"
    ckpt = str(run_dir / "checkpoints" / "best.ckpt")
    assert predict_main(["--ckpt", ckpt, "--output", str(output), *(str(root / r["path"]) for r in test_rows)]) == 0
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    probabilities = torch.tensor([[float(row[f"p_{name}"]) for name in CLASS_NAMES] for row in rows])
    return probabilities, torch.tensor([CLASS_NAMES.index(row["label"]) for row in test_rows])


@pytest.mark.parametrize("recipe", ["frozen", "scratch"])
def test_a_bf16_trained_model_is_tested_in_float32_like_predict(recipe, busi_root, tmp_path):
    config = ["--config", SCRATCH, "--trainer.max_epochs=1"] if recipe == "scratch" else ["--trainer.max_epochs=2"]
    cli = run(
        train_args(busi_root, tmp_path / "runs", "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed", *config)
    )
    run_dir = Path(cli.trainer.log_dir)
    probabilities, labels = predicted_probabilities(run_dir, cli.datamodule.catalog.root, tmp_path)
    test = json.loads((run_dir / "report.json").read_text())["splits"]["test"]
    # The test loss is the mean NLL of the reported probabilities: bf16 would move it by ~1e-2.
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()
    assert loss == pytest.approx(test["loss"], abs=1e-4)
    assert test["accuracy"] == pytest.approx((probabilities.argmax(1) == labels).float().mean().item())
