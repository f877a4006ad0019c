import csv
import json
import logging
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from busi import CLASS_NAMES
from busi.commands.predict import main as predict_main
from busi.commands.train import main
from busi.data.module import BusiDataModule
from busi.model.classifier import BusiClassifier, load_classifier
from busi.training.cli import DEFAULT_CONFIG, BusiCLI, recipe_paths
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args


def test_run_directory_holds_checkpoints_split_audit_and_report(trained_run):
    _, run_dir = trained_run
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "split.csv", "audit.json", "audit.txt",
                 "report.json", "report.txt", "config.yaml", "hparams.yaml"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    with (run_dir / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "split", "group"]
    assert not any("_mask" in row["path"] for row in rows)
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["images"] == len(rows) and len(audit["unreadable"]) == 1


def test_best_checkpoint_is_chosen_by_validation_macro_f1(trained_run):
    cli, run_dir = trained_run
    callback = cli.trainer.checkpoint_callback
    assert callback.monitor == "val/macro_f1" and callback.mode == "max"
    assert callback.best_model_path == str(run_dir / "checkpoints" / "best.ckpt")
    assert json.loads((run_dir / "report.json").read_text())["checkpoint"] == callback.best_model_path


def test_tensorboard_has_epoch_curves_learning_rate_hparams_and_confusion_matrix(trained_run):
    _, run_dir = trained_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "train/macro_f1", "val/loss", "val/acc", "val/macro_f1", "lr-Adam"):
        assert tag in scalars, tag
    assert len(events.Scalars("val/macro_f1")) == 2  # one per epoch
    assert {"test/confusion_matrix", "test/reliability_diagram", "val/grad_cam"} <= set(events.Tags()["images"])
    assert len(events.Images("val/grad_cam")) == 1  # after the last epoch (every 5 epochs otherwise)
    assert "lr: 0.001" in (run_dir / "hparams.yaml").read_text()


def test_report_agrees_with_a_recount_from_predictions(trained_run, tmp_path):
    cli, run_dir = trained_run
    report = json.loads((run_dir / "report.json").read_text())
    root = cli.datamodule.catalog.root
    with (run_dir / "split.csv").open() as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    output = tmp_path / "test_predictions.csv"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    assert (
        predict_main(["--ckpt", str(ckpt), "--output", str(output), *(str(root / r["path"]) for r in test_rows)]) == 0
    )
    with output.open() as handle:
        predicted = [row["label"] for row in csv.DictReader(handle)]
    truth = [row["label"] for row in test_rows]
    matrix = np.zeros((3, 3), dtype=int)
    for true_label, predicted_label in zip(truth, predicted, strict=True):
        matrix[CLASS_NAMES.index(true_label), CLASS_NAMES.index(predicted_label)] += 1
    test = report["splits"]["test"]
    assert test["confusion_matrix"] == matrix.tolist()
    assert test["samples"] == len(truth)
    assert np.isclose(test["accuracy"], np.trace(matrix) / matrix.sum())
    for index, name in enumerate(CLASS_NAMES):
        assert test["per_class"][name]["support"] == matrix[index].sum()
        assert np.isclose(test["per_class"][name]["recall"], matrix[index, index] / matrix[index].sum())
    for split in ("train", "val"):
        assert report["splits"][split]["samples"] == sum(cli.datamodule.split_counts()[split].values())
    text = (run_dir / "report.txt").read_text()
    assert "macro avg" in text and "weighted avg" in text and f"{test['accuracy']:.4f}" in text


def test_checkpoint_reloads_safely_with_the_same_probabilities(trained_run):
    cli, run_dir = trained_run
    reloaded = load_classifier(run_dir / "checkpoints" / "best.ckpt")
    pixels, *_ = next(iter(cli.datamodule._loader("test", shuffle=False)))
    images = cli.model.prepare_inputs(pixels)
    trained = cli.model.eval()
    with torch.no_grad():
        assert torch.allclose(trained(images).softmax(1), reloaded(images).softmax(1), atol=1e-6)


def test_scratch_config_trains_the_whole_network(busi_root, tmp_path):
    cli = BusiCLI(BusiClassifier, BusiDataModule, run=False, args=[
        "--config", str(DEFAULT_CONFIG.parent / "scratch.yaml"),
        f"--data.root={busi_root}", f"--data.image_size={IMAGE_SIZE}", f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    assert cli.model.hparams.weights == "none" and cli.model.hparams.freeze_backbone is False
    assert cli.model.hparams.image_size == IMAGE_SIZE  # linked from data.image_size
    assert all(p.requires_grad for p in cli.model.parameters())


def test_missing_data_folder_exits_with_one_line(tmp_path, capsys):
    code = main(
        ["--model.weights=none", f"--data.root={tmp_path / 'nowhere'}", f"--trainer.default_root_dir={tmp_path}"]
    )
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "nowhere" in error and "--data.root" in error


@pytest.mark.parametrize(
    "option",
    ["--model.loss.label_smoothing=1", "--model.loss.label_smoothing=-0.1", "--model.loss.segmentation_weight=-1"],
)
def test_model_option_out_of_range_exits_with_one_line_naming_it(option, busi_root, tmp_path, capsys):
    assert main(train_args(busi_root, tmp_path, option)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and option.split("=")[0] in error and "must be" in error
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_a_run_writes_its_model_card_beside_the_report_and_into_best_ckpt(trained_run):
    cli, run_dir = trained_run
    card = (run_dir / "model_card.md").read_text(encoding="utf-8")
    test = cli.report["splits"]["test"]
    assert f"{test['samples']} test images: accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}" in card
    assert cli.report["calibration"]["summary"] in card and "## Intended use" in card and "## Known limits" in card
    assert "without pretrained weights: with a frozen backbone only the head learned" in card  # --model.weights none
    split = cli.datamodule.split_counts()
    assert f"train {sum(split['train'].values())}" in card and "seed 42" in card
    stored = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["busi_summary"]
    assert stored["model_card"] == card


def test_a_finished_run_removes_its_resume_point_and_says_how_to_train_on(busi_root, tmp_path, capsys, caplog):
    """last.ckpt (weights and the optimiser's state) goes once the run has finished; best.ckpt stays, and
    `--ckpt_path` on the run says to start from best.ckpt or keep last.ckpt next time."""
    finished = run(train_args(busi_root, tmp_path, epochs=1))
    checkpoints = Path(finished.trainer.log_dir) / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best.ckpt"]
    assert "keep it with --resume.keep_when_finished true" in caplog.text
    capsys.readouterr()
    assert main(train_args(busi_root, tmp_path, f"--ckpt_path={checkpoints.parent}", epochs=2)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "best.ckpt" in error[0] and "--resume.keep_when_finished true" in error[0]


def test_training_resumes_from_last_checkpoint_in_its_own_run_directory(trained_run, busi_root, tmp_path):
    cli, run_dir = trained_run
    copied = tmp_path / "lightning_logs" / "version_0"
    shutil.copytree(run_dir, copied)
    resumed = run(train_args(busi_root, tmp_path, "--ckpt_path=last", epochs=3))
    steps_per_epoch = cli.trainer.global_step // 2
    assert resumed.trainer.current_epoch == 3
    assert resumed.trainer.global_step == 3 * steps_per_epoch
    assert Path(resumed.trainer.log_dir) == copied and not (tmp_path / "lightning_logs" / "version_1").exists()
    assert resumed.datamodule.hparams.split_csv == str(copied / "split.csv")
    events = EventAccumulator(str(copied))
    events.Reload()
    assert [event.step for event in events.Scalars("val/macro_f1")][-1] == 3 * steps_per_epoch - 1


def test_pooled_head_with_balanced_sampling_trains_a_small_checkpoint(trained_run, busi_root, tmp_path):
    _, flatten_run = trained_run
    cli = run(train_args(busi_root, tmp_path, "--model.head=pooled", "--data.sampling=balanced", epochs=1))
    run_dir = Path(cli.trainer.log_dir)
    assert cli.model.hparams.head == "pooled" and cli.datamodule.hparams.sampling == "balanced"
    best = run_dir / "checkpoints" / "best.ckpt"
    saved = (flatten_run / "checkpoints" / "best.ckpt").stat().st_size - best.stat().st_size
    first_layers = (2 * 2 * 1024 - 1024) * 1024 * 4  # bytes: the flatten head's first layer at 64 px, less pooled's
    assert saved == pytest.approx(first_layers, rel=0.01)
    assert load_classifier(best).hparams.head == "pooled"
    assert cli.report["splits"]["test"]["samples"] > 0


def test_the_long_run_options_train_together(busi_root, tmp_path):
    """Oversampling (longer epochs: every image round(1/share) times), the lesion head, the focal loss
    and the long-run augmentation, in one real run whose checkpoint loads back."""
    extra = [
        "--data.sampling=oversample", "--model.head=lesion", "--model.loss.segmentation_weight=0.5", "--model.loss.name=focal",
        "--model.augmentation.enabled=true", "--model.augmentation.rotation=180", "--model.augmentation.vertical_flip=true",
    ]  # fmt: skip
    cli = run(train_args(busi_root, tmp_path, *extra, epochs=1))
    counts = cli.datamodule.split_counts()["train"]
    images = sum(counts.values())
    draws = sum(round(images / n) * n for n in counts.values())
    assert draws > 2 * images
    assert cli.trainer.num_training_batches == math.ceil(draws / 8)
    assert cli.report["training"]["images_seen"] == draws  # the cost a comparison must match, not the images
    classifier = load_classifier(Path(cli.trainer.log_dir) / "checkpoints" / "best.ckpt")
    assert classifier.hparams.head == "lesion" and classifier.settings.loss.name == "focal"
    assert cli.report["splits"]["test"]["segmentation"]


@pytest.mark.parametrize("recipe, warned", [([], True), (["--config", "scratch"], False)])
def test_a_frozen_random_backbone_is_warned_about_in_one_line(recipe, warned, busi_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    args = recipe_paths([*recipe, *train_args(busi_root, tmp_path)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BusiCLI(
            BusiClassifier,
            BusiDataModule,
            run=False,
            args=args,
            parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
        )
    lines = [r.getMessage() for r in caplog.records if "random network" in r.getMessage()]
    assert len(lines) == warned and (not warned or ("--config scratch" in lines[0] and "\n" not in lines[0]))
