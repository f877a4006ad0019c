"""The pretraining's settings: imported by the commands' parsers, so without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from busi.errors import SettingError


@dataclass(frozen=True)
class Pretraining:
    """How the backbone pretrains before the recipe trains (`--pretraining.epochs N`; busi-pretrain).

    Args:
        epochs: passes over the training images; 0: no pretraining (the recipe's own weights).
        batch_size: scans per step (each seen twice): NT-Xent contrasts each view with the other 2·n − 2.
        lr: AdamW's learning rate (cosine decay to 0 after one warm-up epoch).
        weight_decay: AdamW's weight decay.
        temperature: NT-Xent's temperature τ.
        crop_scale: the smallest share of the image a view's random crop keeps.
    """

    epochs: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    crop_scale: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 2:
            raise SettingError("{epochs} must be 0 or more and {batch_size} at least 2", owner="pretraining")
        if not 0 < self.crop_scale <= 1 or self.temperature <= 0 or self.lr <= 0:
            raise SettingError(
                f"{{crop_scale}} {self.crop_scale} must be in (0, 1], {{temperature}} {self.temperature} and "
                f"{{lr}} {self.lr} above 0",
                owner="pretraining",
            )

    def as_dict(self) -> dict:
        return asdict(self)
