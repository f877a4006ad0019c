"""SplitReports: the report's numbers for each split a model answers for, in Lightning's test loop (the
end of training, on every process) or its predict loop (`score`, busi-evaluate): one way to score."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from busi.data.splits import SPLIT_NAMES
from busi.model.answering import answer
from busi.model.inference import Outputs
from busi.model.metrics import SplitEvaluation


class SplitReports(Callback):
    """The report's numbers for each split answered, from what `test_step` / `predict_step` return for
    labelled batches (pixels, labels, keys, masks): loader k is split `split_names[k]` (by default
    BusiDataModule.test_dataloader's order). After `trainer.test` they are also logged as `report/…`
    scalars. `progress` (a tqdm bar) advances by each batch's images."""

    def __init__(self, split_names: tuple[str, ...] = SPLIT_NAMES, progress=None):
        self.split_names = tuple(split_names)
        self.progress = progress
        self.splits: dict[str, dict] = {}
        self._evaluations: dict[str, SplitEvaluation] = {}

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        classes = len(pl_module.class_names)
        self.splits = {}
        self._evaluations = {split: SplitEvaluation(classes).to(pl_module.device) for split in self.split_names}

    def _update(self, trainer, pl_module, outputs: Outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        _, targets, _, masks = batch
        evaluation = self._evaluations[self.split_names[dataloader_idx]]
        evaluation.update(outputs.probabilities, targets, outputs.uncalibrated, outputs.lesions, masks)
        if self.progress is not None:
            self.progress.update(len(targets))

    def _compute(self, pl_module: L.LightningModule) -> None:
        for split, evaluation in self._evaluations.items():
            if evaluation.loss.update_count:
                self.splits[split] = evaluation.compute_report(pl_module.class_names)
        self._evaluations = {}

    on_test_epoch_start = on_predict_epoch_start = _start
    on_test_batch_end = on_predict_batch_end = _update

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compute(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compute(pl_module)
        if "test" not in self.splits:
            return
        for split, values in self.splits.items():
            for name in ("loss", "accuracy", "macro_f1"):
                pl_module.log(f"report/{split}_{name}", values[name], add_dataloader_idx=False, sync_dist=True)
        auroc = self.splits["test"]["auroc_macro_ovr"]
        pl_module.log("report/test_auroc_macro", auroc, add_dataloader_idx=False, sync_dist=True)


def score(model: L.LightningModule, loader: DataLoader, progress=None) -> tuple[dict, Outputs]:
    """(the report's numbers for the labelled images of `loader`, as SplitReports computes them at the
    end of training; every answer, in loader order), in one process on the model's device."""
    reports = SplitReports(("test",), progress)
    outputs = answer(model, loader, callbacks=[reports])
    return reports.splits["test"], outputs
