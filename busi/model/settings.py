"""BusiClassifier's settings by concern: how it optimises, what loss it learns, how training batches are
augmented and how fast it runs. Each is a frozen dataclass: typed on the command line
(`--model.optimizer.lr 3e-4`, `--model.loss.name focal`) and in recipes (`model: {loss: {name: focal}}`),
and kept in checkpoints as a plain dict (weights_only loading reads no classes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from busi.data.augment import MAX_ROTATION_DEGREES
from busi.errors import SettingError


@dataclass(frozen=True)
class Optimizer:
    """Args:
    name: `adam` (the original) or `adamw` (decoupled weight decay).
    lr: the learning rate.
    weight_decay: the optimiser's weight decay.
    warmup_epochs: linear learning-rate warm-up from 0, then `schedule`.
    schedule: `constant` or `cosine` (decay to 0 at the last step).
    backbone_lr_ratio: the backbone's learning rate as a share of `lr` (when the backbone trains).
    """

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    backbone_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "warmup_epochs", "backbone_lr_ratio"):
            if getattr(self, name) < 0:
                raise SettingError(f"{{optimizer.{name}}} {getattr(self, name)}: must be 0 or more")


@dataclass(frozen=True)
class Loss:
    """Args:
    name: the head's training loss: `cross_entropy`, or `focal` (Lin et al. 2017: each image's
        cross-entropy scaled by (1 − p_true)^γ, so confidently right images count less), both with
        the class weights.
    class_weighting: `balanced` weighs the loss by the inverse class frequency of the train split.
    label_smoothing: the cross-entropy's target puts this share of the probability evenly on all
        classes (validation loss, calibration and the report use the hard labels).
    focal_gamma: γ of the focal loss (0: cross-entropy).
    segmentation_weight: λ > 0 adds a lesion decoder (busi.model.network.LesionDecoder) trained with
        λ·(Dice + BCE) on the lesion masks beside the classification loss; 0: no decoder.
    """

    name: Literal["cross_entropy", "focal"] = "cross_entropy"
    class_weighting: Literal["none", "balanced"] = "none"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    segmentation_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise SettingError(
                f"{{loss.label_smoothing}} {self.label_smoothing}: must be at least 0 and below 1 (0: off)"
            )
        if self.name == "focal" and (self.label_smoothing or self.focal_gamma < 0):
            raise SettingError("{loss.name} focal takes {loss.focal_gamma} ≥ 0 and no {loss.label_smoothing}")
        if self.segmentation_weight < 0:
            raise SettingError(f"{{loss.segmentation_weight}} {self.segmentation_weight}: must be 0 (off) or positive")


@dataclass(frozen=True)
class Augmentation:
    """Random ultrasound-safe augmentation of training batches (busi.data.augment).

    Args:
    enabled: augment the training batches.
    rotation: rotations drawn up to ± this many degrees (10: what a probe's tilt gives; up to 180 for
        long from-scratch runs).
    vertical_flip: turn half of the images upside down (no scanner does; a regulariser for long
        from-scratch runs).
    mixing: `mixup` (each image blended with another, Zhang et al. 2018) or `cutmix` (a box of another
        pasted in, Yun et al. 2019), with the labels and lesion masks mixed alike (busi.data.mixing),
        after `enabled`'s augmentation when both are on; `none`: the original.
    mixing_alpha: α of the Beta(α, α) distribution the mixing weight λ is drawn from.
    """

    enabled: bool = False
    rotation: float = MAX_ROTATION_DEGREES
    vertical_flip: bool = False
    mixing: Literal["none", "mixup", "cutmix"] = "none"
    mixing_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.mixing not in ("none", "mixup", "cutmix"):
            raise SettingError(f"{{augmentation.mixing}} {self.mixing}: give none, mixup or cutmix")
        if self.mixing_alpha <= 0:
            raise SettingError(f"{{augmentation.mixing_alpha}} {self.mixing_alpha}: must be above 0 (1: λ uniform)")

    @property
    def changes_pixels(self) -> bool:
        """Training images differ from epoch to epoch (so backbone features cannot be cached)."""
        return self.enabled or self.mixing != "none"


@dataclass(frozen=True)
class Speed:
    """Switches that change how fast busi trains and answers, never what it computes.

    Args:
    cache_features: with a frozen backbone, run it once per image and train the head on the kept
        features (the same model and checkpoints, computed once instead of every epoch).
    feature_cache_mb: memory for cached features; images beyond it run the backbone every epoch.
    channels_last: NHWC memory layout for the convolutions (faster on GPUs and most CPUs).
    compile: run the backbone through torch.compile (checkpoints keep plain parameter names).
    """

    cache_features: bool = True
    feature_cache_mb: float = 4096
    channels_last: bool = True
    compile: bool = False


@dataclass(frozen=True)
class Settings:
    """A BusiClassifier's four groups of settings."""

    optimizer: Optimizer
    loss: Loss
    augmentation: Augmentation
    speed: Speed

    @classmethod
    def of(cls, **groups) -> Settings:
        """From each group's dataclass or the plain dict a checkpoint or a caller holds."""
        return cls(**{name: as_setting(name, value) for name, value in groups.items()})

    def as_dicts(self) -> dict[str, dict]:
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self)}


GROUPS = {"optimizer": Optimizer, "loss": Loss, "augmentation": Augmentation, "speed": Speed}


def as_setting(group: str, value: Any):
    """A group's dataclass from itself or from the plain dict a checkpoint or a caller holds."""
    kind = GROUPS[group]
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in fields(kind)})
        if unknown:
            raise SettingError(
                f"{{{group}}}: no setting {unknown[0]!r}; it takes {', '.join(f.name for f in fields(kind))}"
            )
        return kind(**value)
    raise SettingError(f"{{{group}}} {value!r}: give a busi.model.settings.{kind.__name__} or a dict of its settings")
