"""Distillation: one student model learns what a busi-cv fold ensemble knows
(`busi-train --distillation.teacher runs/cv/NAME`). The Distillation callback computes the teacher's
probabilities of the training images when training starts and wraps the student's training loss."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from busi.data.dataset import ImageTensors
from busi.errors import SettingError
from busi.model.answering import answer
from busi.model.classifier import BusiClassifier
from busi.model.ensemble import load_model
from busi.model.losses import DistillationLoss

Targets = Literal["out_of_fold", "ensemble"]


class Distillation(Callback):
    """The student's training loss becomes (1 − weight)·its own loss + weight·the cross-entropy against the
    teacher's probabilities of each training image; without a teacher it does nothing.

    Args:
        teacher: a finished busi-cv folder whose fold models teach.
        targets: `out_of_fold` (each training image scored by the fold model that never saw it) or
            `ensemble` (the mean of all fold models, each of which trained on most of them).
        weight: the teacher's share of the training loss, in [0, 1].
    """

    def __init__(self, teacher: str | None = None, targets: Targets = "out_of_fold", weight: float = 0.5):
        if not 0 <= weight <= 1:
            raise SettingError(f"{{weight}} {weight}: must be in [0, 1]", owner="distillation")
        self.teacher, self.targets, self.weight = teacher, targets, weight
        self.soft_targets: dict[str, torch.Tensor] = {}  # the teacher's probabilities by image digest

    def on_train_start(self, trainer, pl_module: BusiClassifier) -> None:
        # after the module's on_fit_start, which sets the class weights of its own loss
        if self.teacher:
            if pl_module.settings.augmentation.mixing != "none":
                raise SettingError(
                    "a teacher's targets are per image, which mixed pairs are not: "
                    "train with --model.augmentation.mixing none or without {teacher}",
                    owner="distillation",
                )
            datamodule = trainer.datamodule
            indices = datamodule.dataset("train").indices
            self.soft_targets = teacher_targets(Path(self.teacher), self.targets, datamodule, indices, pl_module.device)
            pl_module.training_loss = DistillationLoss(pl_module.training_loss, self.soft_targets, self.weight)

    def on_train_end(self, trainer, pl_module: BusiClassifier) -> None:
        if isinstance(pl_module.training_loss, DistillationLoss):
            pl_module.training_loss = pl_module.training_loss.loss


def out_of_fold_probabilities(cv_dir: Path) -> dict[str, list[float]]:
    """Each image's calibrated probabilities from the fold model that never saw it (the folds'
    out_of_fold.csv), by its path relative to the data folder."""
    files = sorted(Path(cv_dir).glob("fold_*/lightning_logs/version_*/out_of_fold.csv"))
    if not files:
        raise SettingError(
            f"{{teacher}} {cv_dir}: no fold_*/…/out_of_fold.csv; pass a finished busi-cv folder", owner="distillation"
        )
    table = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                table[row["path"]] = [float(value) for key, value in row.items() if key.startswith("p_")]
    return table


def teacher_targets(cv_dir: Path, kind: Targets, datamodule, indices: list[int], device) -> dict[str, torch.Tensor]:
    """The teacher's probabilities for the student's training images (`indices` into the datamodule's
    catalog), by pixel digest: `out_of_fold` (each image scored by the fold model that never saw it)
    or `ensemble` (the mean of every fold model; each has trained on most of these images)."""
    catalog = datamodule.catalog
    if kind == "out_of_fold":
        table = out_of_fold_probabilities(cv_dir)
        missing = [catalog.relative(i) for i in indices if catalog.relative(i) not in table]
        if missing:
            raise SettingError(
                f"{{teacher}} {cv_dir}: {len(missing)} training images were not in its cross-validation "
                f"(e.g. {missing[0]}); train the student on the folder the teacher was cross-validated on",
                owner="distillation",
            )
        return {catalog.digests[i]: torch.tensor(table[catalog.relative(i)], device=device) for i in indices}
    teacher = load_model(cv_dir).to(device)  # weights_only
    if teacher.image_size != catalog.image_size:
        raise SettingError(
            f"{{teacher}} {cv_dir}: its models take {teacher.image_size} px, the student "
            f"{catalog.image_size} px; train the student at the teacher's size",
            owner="distillation",
        )
    probabilities = answer(teacher, DataLoader(ImageTensors(catalog, indices), batch_size=32)).probabilities
    return {catalog.digests[i]: p.to(device) for i, p in zip(indices, probabilities, strict=True)}
