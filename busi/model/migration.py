"""Earlier busi versions' spellings of BusiClassifier's settings (one flat list of 30), and where each
lives now: in a settings group of the model (busi.model.settings) or in a training callback. Old
checkpoints load through `migrate_hyperparameters`; old flags and recipes are rewritten by
busi.training.cli with a warning."""

from __future__ import annotations

from typing import Any

from busi.model.settings import GROUPS

# old model argument → its place now: "group.setting" inside the model, or "callback_key.setting"
# for those that moved to a training callback (busi.callbacks.distillation, busi.callbacks.finetuning)
MOVED = {
    "lr": "optimizer.lr",
    "optimizer": "optimizer.name",
    "weight_decay": "optimizer.weight_decay",
    "warmup_epochs": "optimizer.warmup_epochs",
    "schedule": "optimizer.schedule",
    "backbone_lr_ratio": "optimizer.backbone_lr_ratio",
    "loss": "loss.name",
    "class_weighting": "loss.class_weighting",
    "label_smoothing": "loss.label_smoothing",
    "focal_gamma": "loss.focal_gamma",
    "segmentation_weight": "loss.segmentation_weight",
    "augment": "augmentation.enabled",
    "augment_rotation": "augmentation.rotation",
    "augment_vertical_flip": "augmentation.vertical_flip",
    "cache_features": "speed.cache_features",
    "feature_cache_mb": "speed.feature_cache_mb",
    "channels_last": "speed.channels_last",
    "compile": "speed.compile",
}
TO_CALLBACKS = {
    "teacher": "distillation.teacher",
    "teacher_targets": "distillation.targets",
    "distillation_weight": "distillation.weight",
    "unfreeze_backbone_at_epoch": "finetuning.unfreeze_backbone_at_epoch",
}
GROUP_NAMES = set(GROUPS)


def is_old_value(name: str, value: Any) -> bool:
    """`optimizer` and `loss` are both an old setting (a name: `adamw`, `focal`) and a group now (a dict)."""
    return name in MOVED and not (
        name in GROUP_NAMES and (isinstance(value, dict) or hasattr(value, "__dataclass_fields__"))
    )


def migrate_hyperparameters(hparams: dict) -> dict:
    """A checkpoint's hyperparameters in today's form: old flat settings into their groups; those that
    moved to training callbacks (teacher, unfreezing) are dropped, since a trained model answers without
    them. Today's hyperparameters come back unchanged."""
    migrated: dict[str, Any] = {}
    groups: dict[str, dict] = {}
    for name, value in hparams.items():
        if name in TO_CALLBACKS:
            continue
        if is_old_value(name, value):
            group, setting = MOVED[name].split(".")
            groups.setdefault(group, {})[setting] = value
        elif name in GROUP_NAMES and isinstance(value, dict):
            groups.setdefault(name, {}).update(value)
        else:
            migrated[name] = value
    return {**migrated, **groups}
