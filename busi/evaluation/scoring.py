"""`score`: the report's numbers for a model on a labelled loader, through the answering path."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from busi.model.answering import answer
from busi.model.inference import Outputs
from busi.model.metrics import SplitEvaluation


class Scoring(Callback):
    """Each answered batch of (pixels, labels, keys, masks) into one SplitEvaluation; `progress` (a
    tqdm bar) advances by the batch's images."""

    def __init__(self, classes: int, progress=None):
        self.evaluation = SplitEvaluation(classes)
        self.progress = progress

    def on_predict_batch_end(self, trainer, pl_module, outputs: Outputs, batch, batch_idx: int, dataloader_idx=0):
        _, targets, _, masks = batch
        evaluation = self.evaluation.to(outputs.probabilities.device)
        evaluation.update(
            outputs.probabilities, targets.to(evaluation.loss.device), outputs.uncalibrated, outputs.lesions, masks
        )
        if self.progress is not None:
            self.progress.update(len(targets))


def score(model: L.LightningModule, loader: DataLoader, progress=None) -> tuple[dict, Outputs]:
    """(the split's report: busi.model.metrics.SplitEvaluation.compute_report, every answer in loader order)."""
    scoring = Scoring(len(model.class_names), progress)
    outputs = answer(model, loader, callbacks=[scoring])
    return scoring.evaluation.compute_report(model.class_names), outputs
