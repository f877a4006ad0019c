"""Cross-validation folds, the CV command, temperature scaling, augmentation and the scratch recipe."""

import json
from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from busi.augment import augment_batch
from busi.calibration import fit_temperature
from busi.cli import DEFAULT_CONFIG, run
from busi.cv import main as cv_main
from busi.cv import operating_point
from busi.model import load_classifier
from busi.splits import fold_splits

from fake_busi import IMAGE_SIZE


def test_folds_are_stratified_keep_groups_whole_and_test_and_validate_each_image_once():
    labels = [0] * 60 + [1] * 30 + [2] * 20
    groups = [i // 3 if i < 30 else i for i in range(len(labels))]  # 10 triplets of near-duplicates
    folds = 5
    roles = [fold_splits(groups, labels, folds, k, seed=1) for k in range(folds)]
    for image in range(len(labels)):
        column = [roles[k][image] for k in range(folds)]
        assert column.count("test") == 1 and column.count("val") == 1
    for k in range(folds):
        by_group = defaultdict(set)
        for image, role in enumerate(roles[k]):
            by_group[groups[image]].add(role)
        assert all(len(r) == 1 for r in by_group.values())
        tested = Counter(labels[i] for i, role in enumerate(roles[k]) if role == "test")
        assert abs(tested[0] - 12) <= 3 and tested[1] == 6 and tested[2] == 4  # a fifth of each class
    with pytest.raises(ValueError, match="at least 3 folds"):
        fold_splits(groups, labels, 2, 0, seed=1)


def test_temperature_scaling_calibrates_overconfident_logits_without_changing_predictions():
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (600,))
    logits = torch.randn(600, 3)
    logits[torch.arange(600), targets] += 1.0  # about 65 % accurate …
    logits *= 4  # … and far too confident
    temperature = fit_temperature(logits, targets)
    ece = MulticlassCalibrationError(3, n_bins=10)
    before, after = ece(logits.softmax(1), targets), ece((logits / temperature).softmax(1), targets)
    assert temperature > 1.5 and after <= before and after < 0.05
    assert F.cross_entropy(logits / temperature, targets) < F.cross_entropy(logits, targets)
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))


def test_augmentation_varies_per_image_but_never_turns_the_scan_upside_down():
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    image[:, :, :20] = 200  # bright skin line at the top, as under the transducer
    image[:, :, 20:, :16] = 120  # something on the left
    augmented = augment_batch(image.expand(32, -1, -1, -1))
    assert augmented.shape == (32, 3, 64, 64) and augmented.dtype == torch.float32
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert all(a[:, :16].mean() > a[:, -16:].mean() for a in augmented)  # the top stays on top
    left_brighter = sum(bool(a[:, 24:, :16].mean() > a[:, 24:, -16:].mean()) for a in augmented)
    assert 6 < left_brighter < 26  # mirrored about half of the time
    assert len({round(float(a.mean()), 4) for a in augmented}) == 32  # one draw per image


def test_scratch_recipe_trains_with_balanced_loss_cosine_schedule_and_stores_its_temperature(busi_root, tmp_path):
    cli = run([
        "--config", str(DEFAULT_CONFIG.parent / "scratch.yaml"), f"--data.root={busi_root}",
        f"--data.image_size={IMAGE_SIZE}", "--data.batch_size=8", "--trainer.max_epochs=4",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])  # fmt: skip
    model = cli.model
    assert not model.hparams.augment and model.hparams.tta and model.hparams.optimizer == "adamw"  # measured
    counts = torch.tensor(list(cli.datamodule.split_counts()["train"].values()), dtype=torch.float32)
    assert torch.allclose(model.class_weight, counts.sum() / (3 * counts))
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] < 0.02 * model.hparams.lr  # cosine decayed to ~0
    assert any(type(c).__name__ == "EarlyStopping" for c in cli.trainer.callbacks)
    report = json.loads((tmp_path / "lightning_logs/version_0/report.json").read_text())
    best = load_classifier(tmp_path / "lightning_logs/version_0/checkpoints/best.ckpt")
    assert float(best.temperature) == pytest.approx(report["temperature"]) and report["temperature"] != 1.0
    test = report["splits"]["test"]
    assert 0 <= test["ece"] <= 1 and 0 <= test["ece_uncalibrated"] <= 1


def test_operating_point_reports_the_argmax_decision_and_the_roc_point_at_80_percent_sensitivity():
    # 10 malignant (label 1), 10 others; p(malignant) ranks 9 of the 10 cancers above every other image
    p_malignant = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.55, 0.45, 0.4, 0.35, 0.3, 0.05] + [0.2] * 9 + [0.1])
    labels = torch.tensor([1] * 10 + [0] * 9 + [2])
    probabilities = torch.stack([(1 - p_malignant) * 0.6, p_malignant, (1 - p_malignant) * 0.4], dim=1)
    point = operating_point(probabilities, labels, positive=1)
    assert point["sensitivity"] == pytest.approx(0.7)  # argmax picks malignant where p > 0.6 (1 - p): 7 of 10
    assert point["specificity"] == 1.0
    assert point["specificity_at_target"] == 1.0 and point["threshold_at_target"] == pytest.approx(0.35)


def test_cv_command_trains_every_fold_and_pools_the_out_of_fold_predictions(busi_root, tmp_path, capsys):
    args = [
        "--folds", "3", "--model.weights=none", f"--data.root={busi_root}", f"--data.image_size={IMAGE_SIZE}",
        "--data.batch_size=8", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    assert cv_main(args) == 0
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    images = json.loads((tmp_path / "cv/fold_0/lightning_logs/version_0/audit.json").read_text())["images"]
    assert len(summary["per_fold"]) == 3 and summary["out_of_fold"]["images"] == images
    assert sum(map(sum, summary["out_of_fold"]["confusion_matrix"])) == images
    assert sum(fold["images"] for fold in summary["per_fold"]) == images
    accuracies = [fold["accuracy"] for fold in summary["per_fold"]]
    assert summary["mean_sd"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 3)
    matrix, point = summary["out_of_fold"]["confusion_matrix"], summary["out_of_fold"]["operating_point"]
    assert point["sensitivity"] == pytest.approx(matrix[1][1] / sum(matrix[1]))  # malignant recall, pooled
    assert "Pooled out-of-fold" in capsys.readouterr().out
    assert (tmp_path / "cv" / "cv_summary.txt").is_file() and list((tmp_path / "cv").glob("events.out.tfevents.*"))
    assert cv_main(args) == 0  # a finished cross-validation is summarised again, not retrained
    assert "done before, kept" in capsys.readouterr().out
