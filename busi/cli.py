"""`python train.py`: LightningCLI over BusiClassifier and BusiDataModule, then test the best checkpoint."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from busi.data import BusiDataModule, DataError
from busi.model import BusiClassifier, WeightsError
from busi.report import format_report

# BusiClassifier normalises uint8 batches on the device by design; Lightning warns whenever a
# LightningModule and a LightningDataModule could both do it.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def default_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def last_checkpoint() -> ModelCheckpoint:
    """`last.ckpt` with the full training state (optimizer, loops), rewritten every epoch, to resume from.
    Kept apart from the best checkpoint, which holds weights only: the head's Adam state is twice
    the size of its weights."""
    return ModelCheckpoint(save_top_k=0, save_last=True)


class BusiCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/macro_f1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_weights_only": True,  # prediction needs weights; resuming uses last.ckpt
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("data.image_size", "model.image_size")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from a checkpoint, e.g. RUN/checkpoints/last.ckpt",
        )


def run(args: list[str] | None = None) -> LightningCLI:
    """Fit, then test the best checkpoint (by validation macro-F1) on train, val and test."""
    cli = BusiCLI(
        BusiClassifier,
        BusiDataModule,
        run=False,
        args=args,
        trainer_defaults={"precision": default_precision(), "callbacks": [last_checkpoint()]},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
    if cli.model.report and cli.trainer.is_global_zero:
        print(format_report(cli.model.report))
        print(f"\nRun directory: {cli.trainer.log_dir}")
    return cli


def main(args: list[str] | None = None) -> int:
    try:
        run(args)
    except (DataError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
