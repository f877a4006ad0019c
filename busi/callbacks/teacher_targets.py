"""Soft targets from a busi-cv folder, so that one student model learns what the fold ensemble knows
(`busi-train --model.teacher runs/cv/NAME`): TeacherTargets computes them when a fit starts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from busi.data.dataset import ImageTensors
from busi.errors import OptionError
from busi.model.answering import answer
from busi.model.classifier import BusiClassifier
from busi.model.ensemble import load_model


class TeacherTargets(Callback):
    """When a fit with `--model.teacher` starts: the teacher's probabilities of the training images into
    BusiClassifier.soft_targets, which its training loss reads."""

    def on_fit_start(self, trainer, pl_module: BusiClassifier) -> None:
        hp = pl_module.hparams
        if hp.teacher:
            datamodule = trainer.datamodule
            indices = datamodule.dataset("train").indices
            pl_module.soft_targets = teacher_targets(
                Path(hp.teacher), hp.teacher_targets, datamodule, indices, pl_module.device
            )


def out_of_fold_probabilities(cv_dir: Path) -> dict[str, list[float]]:
    """Each image's calibrated probabilities from the fold model that never saw it (the folds'
    out_of_fold.csv), by its path relative to the data folder."""
    files = sorted(Path(cv_dir).glob("fold_*/lightning_logs/version_*/out_of_fold.csv"))
    if not files:
        raise OptionError(f"--model.teacher {cv_dir}: no fold_*/…/out_of_fold.csv; pass a finished busi-cv folder")
    table = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                table[row["path"]] = [float(value) for key, value in row.items() if key.startswith("p_")]
    return table


def teacher_targets(
    cv_dir: Path, kind: Literal["out_of_fold", "ensemble"], datamodule, indices: list[int], device
) -> dict[str, torch.Tensor]:
    """The teacher's probabilities for the student's training images (`indices` into the datamodule's
    catalog), by pixel digest: `out_of_fold` (each image scored by the fold model that never saw it)
    or `ensemble` (the mean of every fold model; each has trained on most of these images)."""
    catalog = datamodule.catalog
    if kind == "out_of_fold":
        table = out_of_fold_probabilities(cv_dir)
        missing = [catalog.relative(i) for i in indices if catalog.relative(i) not in table]
        if missing:
            raise OptionError(
                f"--model.teacher {cv_dir}: {len(missing)} training images were not in its cross-validation "
                f"(e.g. {missing[0]}); train the student on the folder the teacher was cross-validated on"
            )
        return {catalog.digests[i]: torch.tensor(table[catalog.relative(i)], device=device) for i in indices}
    teacher = load_model(cv_dir).to(device)  # weights_only
    if teacher.image_size != catalog.image_size:
        raise OptionError(
            f"--model.teacher {cv_dir}: its models take {teacher.image_size} px, the student "
            f"{catalog.image_size} px; train the student at the teacher's size"
        )
    probabilities = answer(teacher, DataLoader(ImageTensors(catalog, indices), batch_size=32)).probabilities
    return {catalog.digests[i]: p.to(device) for i, p in zip(indices, probabilities, strict=True)}
