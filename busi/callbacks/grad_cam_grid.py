"""GradCamGrid: validation images beside their Grad-CAM overlays, in TensorBoard."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from busi.evaluation.plots import overlay


class GradCamGrid(Callback):
    """TensorBoard image `val/grad_cam`: validation images (the same ones each time, classes mixed)
    beside their Grad-CAM overlays, captioned with the predicted and the true class; logged every
    `every_n_epochs` epochs and after the last."""

    def __init__(self, every_n_epochs: int = 5, images: int = 6):
        self.every_n_epochs = every_n_epochs
        self.images = images

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        due = epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs
        experiment = getattr(pl_module.logger, "experiment", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not due or not hasattr(experiment, "add_image"):
            return
        dataset = trainer.datamodule.dataset("val")
        labels = [dataset.catalog.records[i].label for i in dataset.indices]
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        chosen = [i for group in zip(*by_class.values(), strict=False) for i in group][: self.images]
        if not chosen:
            return
        pixels = torch.stack([dataset[i][0] for i in chosen])
        outputs = pl_module.infer(pixels, explain=True)
        names = pl_module.class_names
        tiles = []
        for i, image, cam, row, predicted in zip(
            chosen, pixels, outputs.cams, outputs.probabilities, outputs.explained, strict=True
        ):
            caption = f"pred {names[predicted]} {float(row[predicted]):.0%}\ntrue {names[labels[i]]}"
            tiles.append(np.asarray(overlay(image, cam, caption)))
        tiles += [np.full_like(tiles[0], 255)] * (len(tiles) % 2)
        grid = np.concatenate([np.concatenate(tiles[k : k + 2], axis=1) for k in range(0, len(tiles), 2)], axis=0)
        experiment.add_image("val/grad_cam", grid, trainer.global_step, dataformats="HWC")
