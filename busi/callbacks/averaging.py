"""Stochastic weight averaging (Izmailov et al. 2018) on Lightning's WeightAveraging: the equal average of
the weights reached at the end of each epoch from `start_epoch` on. Lightning's older
`StochasticWeightAveraging` callback swaps the average in only when training ends, after busi has chosen
best.ckpt by validation; on WeightAveraging the average is what is validated, what best.ckpt holds
(busi.training.cli writes it in full) and what is calibrated and tested."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

from busi.errors import SettingError


class StochasticWeightAveraging(WeightAveraging):
    """Use with `--trainer.callbacks+=busi.callbacks.averaging.StochasticWeightAveraging
    --trainer.callbacks.start_epoch=15`. Until the first epoch is averaged, validation sees the raw weights.

    Args:
        start_epoch: the first (0-based) epoch whose final weights enter the average. BatchNorm's running
            statistics are averaged alike (Lightning's `use_buffers`), not recomputed.
    """

    def __init__(self, start_epoch: int = 15):
        if start_epoch < 0:
            raise SettingError(f"{{start_epoch}} {start_epoch}: must be 0 or more", owner="trainer.callbacks")
        super().__init__(use_buffers=True)
        self.start_epoch = start_epoch
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # after an epoch's last optimizer step, so that the epoch's own validation sees its average
        trainer = self._trainer
        if step_idx is None or trainer is None or trainer.current_epoch < self.start_epoch:
            return False
        return trainer.is_last_batch

    @property
    def averaged(self) -> bool:
        model = self._average_model
        return model is not None and int(model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaged:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaged:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaged:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        averaged = self.averaged
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if not averaged and "current_model_state" in checkpoint:
            # nothing averaged yet: the checkpoint holds the weights reached (Lightning's would hold a copy
            # of the starting ones); resuming then starts the average afresh, as the run would have
            checkpoint["state_dict"] = checkpoint["current_model_state"]
