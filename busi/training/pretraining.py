"""Pretraining runs: `busi-pretrain` (busi.commands.pretrain) writes a backbone file, and `busi-train
--pretraining.epochs N` (so each busi-cv fold) pretrains on its own training split before the recipe trains.
Either way only the train split's images are seen, without their labels: never a validation or test image."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from busi import __version__
from busi.data.module import BusiDataModule
from busi.errors import OptionError
from busi.model.contrastive import ContrastivePretraining
from busi.training.checkpointing import AtomicCheckpointIO
from busi.training.cli import choose_precision
from busi.training.pretraining_settings import Pretraining

BACKBONE_FILE = "backbone.pt"  # in a run directory that pretrained
PRETRAINING_KEY = "busi_pretraining"  # in a backbone file: how it was made


def pretrain(
    datamodule: BusiDataModule,
    settings: Pretraining,
    output: Path,
    start: dict[str, torch.Tensor] | None = None,
    preprocessing: str = "imagenet",
    accelerator: str = "auto",
    log_dir: Path | None = None,
) -> dict:
    """Pretrain a DenseNet121 backbone on `datamodule`'s train split, from the `start` features' weights
    (None: random), and write it to `output` as {"state_dict": {"features.…": …}, PRETRAINING_KEY: what
    was done}; returns the latter. On one device; the seed is the caller's (Lightning's seed_everything)."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    images = datamodule.dataset("train")
    if len(images) < settings.batch_size:
        raise OptionError(
            f"--pretraining.batch_size {settings.batch_size}: the train split has only {len(images)} images"
        )
    loader = DataLoader(images, batch_size=settings.batch_size, shuffle=True, drop_last=True)
    precision, _ = choose_precision(accelerator, freeze_backbone=False)
    model = ContrastivePretraining(settings, settings.epochs * len(loader), preprocessing)
    if start is not None:
        model.features.load_state_dict(start)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=settings.epochs,
        logger=L.pytorch.loggers.TensorBoardLogger(str(log_dir), name="", version="pretraining") if log_dir else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    started = time.monotonic()
    trainer.fit(model, train_dataloaders=loader)
    loss = trainer.callback_metrics.get("pretrain/loss")
    hp = datamodule.hparams
    made = {
        "objective": "simclr",
        "settings": settings.as_dict(),
        "images": len(images),
        "images_seen": 2 * settings.batch_size * len(loader) * settings.epochs,
        "image_size": hp.image_size,
        "split": {"seed": hp.seed, "folds": hp.folds, "fold": hp.fold, "root": str(hp.root)},
        "final_loss": None if loss is None else float(loss),
        "seconds": round(time.monotonic() - started, 1),
        "precision": precision,
        "busi_version": __version__,
    }
    features = {f"features.{key}": value.detach().cpu().clone() for key, value in model.features.state_dict().items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint({"state_dict": features, PRETRAINING_KEY: made}, output)
    return made
