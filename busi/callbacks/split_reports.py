"""SplitReports: the report's numbers for each split that `trainer.test` scores."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from busi.data.splits import SPLIT_NAMES
from busi.model.classifier import BusiClassifier
from busi.model.inference import Outputs
from busi.model.metrics import SplitEvaluation


class SplitReports(Callback):
    """The report's numbers for each split that `trainer.test` scores (BusiDataModule.test_dataloader:
    one loader per split), from what BusiClassifier.test_step returns; logged as `report/…` scalars."""

    def __init__(self):
        self.splits: dict[str, dict] = {}
        self._evaluations: dict[str, SplitEvaluation] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: BusiClassifier) -> None:
        classes = len(pl_module.class_names)
        self.splits = {}
        self._evaluations = {split: SplitEvaluation(classes).to(pl_module.device) for split in SPLIT_NAMES}

    def on_test_batch_end(
        self, trainer, pl_module, outputs: Outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        _, targets, _, masks = batch
        evaluation = self._evaluations[SPLIT_NAMES[dataloader_idx]]
        evaluation.update(outputs.probabilities, targets, outputs.uncalibrated, outputs.lesions, masks)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: BusiClassifier) -> None:
        for split, evaluation in self._evaluations.items():
            if evaluation.loss.update_count:
                self.splits[split] = evaluation.compute_report(pl_module.class_names)
        self._evaluations = {}
        if "test" not in self.splits:
            return
        for split, values in self.splits.items():
            for name in ("loss", "accuracy", "macro_f1"):
                pl_module.log(f"report/{split}_{name}", values[name], add_dataloader_idx=False, sync_dist=True)
        auroc = self.splits["test"]["auroc_macro_ovr"]
        pl_module.log("report/test_auroc_macro", auroc, add_dataloader_idx=False, sync_dist=True)
