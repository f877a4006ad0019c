"""Fine-tuning in two stages: the head (and lesion decoder) train on fixed backbone weights first, then
the backbone trains too (`--finetuning.unfreeze_backbone_at_epoch 5`, configs/finetune.yaml)."""

from __future__ import annotations

from lightning.pytorch.callbacks import BaseFinetuning

from busi.errors import SettingError
from busi.model.classifier import BusiClassifier


class BackboneUnfreezing(BaseFinetuning):
    """The backbone's weights stay fixed for the first `unfreeze_backbone_at_epoch` epochs, then train.
    BatchNorm layers train throughout (their statistics and, from that epoch, their weights). The
    backbone is in the optimiser from the start (its own learning rate: `optimizer.backbone_lr_ratio`),
    so no parameter group is added mid-run, which torch's LR schedulers refuse; whether it trains is a
    function of the epoch, so a resumed run continues exactly. 0: the backbone trains from the start.
    Under DDP add `--trainer.strategy ddp_find_unused_parameters_true`."""

    def __init__(self, unfreeze_backbone_at_epoch: int = 0):
        super().__init__()
        if unfreeze_backbone_at_epoch < 0:
            raise SettingError(
                f"{{unfreeze_backbone_at_epoch}} {unfreeze_backbone_at_epoch}: must be 0 (off) or more",
                owner="finetuning",
            )
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch

    def freeze_before_training(self, pl_module: BusiClassifier) -> None:
        if not self.unfreeze_backbone_at_epoch:
            return
        if pl_module.hparams.freeze_backbone:
            raise SettingError(
                f"{{unfreeze_backbone_at_epoch}} {self.unfreeze_backbone_at_epoch} unfreezes a backbone that the "
                "model keeps frozen (its freeze_backbone is true); train a model with freeze_backbone false",
                owner="finetuning",
            )
        pl_module.model.features.requires_grad_(False)

    def finetune_function(self, pl_module: BusiClassifier, epoch: int, optimizer) -> None:
        if self.unfreeze_backbone_at_epoch:
            pl_module.model.features.requires_grad_(epoch >= self.unfreeze_backbone_at_epoch)
