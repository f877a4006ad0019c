"""Earlier busi versions' checkpoints, flags and recipes: read as today's, answering as before."""

from pathlib import Path

import pytest
import torch
import yaml

from busi.model.classifier import BusiClassifier, load_classifier
from busi.model.migration import migrate_hyperparameters
from busi.model.settings import Augmentation, Loss, Optimizer
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args

# what busi 0.1's BusiClassifier saved: its 30 arguments, flat
OLD_HYPERPARAMETERS = {
    "weights": "none", "freeze_backbone": False, "lr": 3e-4, "image_size": IMAGE_SIZE,
    "class_names": ("benign", "malignant", "normal"), "cache_features": True, "channels_last": True,
    "compile": False, "feature_cache_mb": 4096, "augment": True, "class_weighting": "balanced",
    "label_smoothing": 0.0, "optimizer": "adamw", "weight_decay": 0.01, "warmup_epochs": 2.0,
    "schedule": "cosine", "tta": True, "head": "lesion", "segmentation_weight": 0.5,
    "unfreeze_backbone_at_epoch": 3, "backbone_lr_ratio": 0.1, "preprocessing": "imagenet",
    "batch_norm_eps": 1e-5, "augment_rotation": 180, "augment_vertical_flip": True, "loss": "focal",
    "focal_gamma": 1.5, "teacher": "runs/cv", "teacher_targets": "ensemble", "distillation_weight": 0.3,
}  # fmt: skip


def test_a_checkpoint_of_the_flat_30_settings_loads_into_the_groups_and_answers_the_same(tmp_path):
    torch.manual_seed(0)
    model = BusiClassifier(
        weights=None, freeze_backbone=False, image_size=IMAGE_SIZE, head="lesion", tta=True,
        loss=Loss(name="focal", focal_gamma=1.5, class_weighting="balanced", segmentation_weight=0.5),
    ).eval()  # fmt: skip
    model.temperature.fill_(1.7)
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": OLD_HYPERPARAMETERS,
            "pytorch-lightning_version": "2.5.1",
        },
        path,
    )
    loaded = load_classifier(path)
    settings = loaded.settings
    assert settings.optimizer == Optimizer("adamw", 3e-4, 0.01, 2.0, "cosine", 0.1)
    assert settings.loss == Loss("focal", "balanced", 0.0, 1.5, 0.5)
    assert settings.augmentation == Augmentation(enabled=True, rotation=180, vertical_flip=True)
    assert loaded.hparams.head == "lesion" and loaded.hparams.tta and loaded.segments
    assert not {"teacher", "unfreeze_backbone_at_epoch", "lr"} & set(loaded.hparams)
    pixels = torch.randint(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    before, after = model.infer(pixels), loaded.infer(pixels)
    assert torch.equal(before.probabilities, after.probabilities)
    assert torch.equal(before.lesions, after.lesions)
    assert float(loaded.temperature) == pytest.approx(1.7)


def test_todays_hyperparameters_come_through_the_migration_unchanged():
    hparams = dict(BusiClassifier(weights=None, image_size=IMAGE_SIZE, optimizer=Optimizer(name="adamw")).hparams)
    assert migrate_hyperparameters(hparams) == hparams


def test_earlier_flags_and_recipes_are_read_as_todays_with_a_warning(busi_root, tmp_path, capsys, caplog):
    recipe = tmp_path / "old_recipe.yaml"
    recipe.write_text(
        "model:\n  lr: 0.01\n  optimizer: adamw\n  segmentation_weight: 0.5\n  freeze_backbone: false\n"
        "  unfreeze_backbone_at_epoch: 2\n  teacher: null\n"
    )
    args = [
        *train_args(busi_root, tmp_path),
        "--config",
        str(recipe),
        "--model.loss=focal",
        "--model.augment_rotation",
        "30",
    ]
    with pytest.raises(SystemExit):
        run([*args, "--print_config"])
    captured = capsys.readouterr()
    config = yaml.safe_load(captured.out)
    model = config["model"]
    assert model["optimizer"]["lr"] == 0.01 and model["optimizer"]["name"] == "adamw"
    assert model["loss"] == {**model["loss"], "name": "focal", "segmentation_weight": 0.5}
    assert model["augmentation"]["rotation"] == 30
    assert config["finetuning"]["unfreeze_backbone_at_epoch"] == 2 and config["distillation"]["teacher"] is None
    said = caplog.text  # Lightning's rank-zero log
    assert "--model.loss is now --model.loss.name" in said
    assert "--model.augment_rotation is now --model.augmentation.rotation" in said
    assert f"{recipe} spells model.lr" in said and "finetuning.unfreeze_backbone_at_epoch" in said
    assert not list(Path(tmp_path).glob("runs/*"))  # nothing trained
