"""`busi-train` / `python train.py`: one training run; BusiCLI builds it, it fits and finishes
(busi.training.finish) in its run directory, where it writes its split and audit when the fit starts."""

from __future__ import annotations

import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from busi.callbacks.checkpointing import ResumeCheckpoint, StepSeed
from busi.callbacks.epoch_history import EpochHistory
from busi.callbacks.grad_cam_grid import GradCamGrid
from busi.callbacks.run_files import RunFiles
from busi.callbacks.split_reports import SplitReports
from busi.data.module import BusiDataModule
from busi.errors import OptionError, ResumeError, SettingError
from busi.model.classifier import BusiClassifier
from busi.model.network import load_backbone_weights
from busi.training.checkpointing import load_starting_weights
from busi.training.cli import DEFAULT_CONFIG, BusiCLI, current_spellings, recipe_paths
from busi.training.finish import finish
from busi.training.pretraining import BACKBONE_FILE, pretrain
from busi.training.pretraining_settings import Pretraining


@dataclass
class TrainingRun:
    trainer: L.Trainer
    model: BusiClassifier
    datamodule: BusiDataModule
    report: dict | None  # busi.evaluation.report.build_report's, on the main process; None without a test split

    @property
    def run_dir(self) -> Path | None:
        return Path(self.trainer.log_dir) if self.trainer.log_dir else None


def pretrain_backbone(cli: BusiCLI, settings: Pretraining) -> None:
    """`--pretraining.epochs N`: pretrain the backbone on this run's train split (busi.training.pretraining),
    from the weights the model starts with, into RUN/backbone.pt, and start from it. A resumed run has
    its weights in its checkpoint already; a fine-tuned one, its starting checkpoint's."""
    if cli.config.ckpt_path:
        if cli.start_from is not None:
            raise OptionError(
                "--pretraining.epochs and --ckpt_path of a checkpoint to fine-tune from: choose one start"
            )
        rank_zero_info("pretraining: done before this run was interrupted (its weights are in the checkpoint)")
        return
    model, run_dir = cli.model, Path(cli.trainer.log_dir)
    backbone = run_dir / BACKBONE_FILE
    start = {key: value.detach().clone() for key, value in model.model.features.state_dict().items()}
    accelerator = cli.config.trainer.accelerator or "auto"
    made = pretrain(cli.datamodule, settings, backbone, start, model.hparams.preprocessing, accelerator, run_dir)
    load_backbone_weights(model.model.features, str(backbone))
    rank_zero_info(
        f"pretraining: {made['images']} training images, {made['images_seen']} views in {made['seconds']} s "
        f"(final loss {made['final_loss']}) → {backbone}"
    )


def run(args: list[str] | None = None) -> TrainingRun:
    """Train with busi-train's options (`args`; default: the command line) and finish the run."""
    with warnings.catch_warnings():  # args given from Python (busi.commands.cv, tests) while sys.argv has its own
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = BusiCLI(
            BusiClassifier,
            BusiDataModule,
            run=False,
            args=current_spellings(recipe_paths(sys.argv[1:] if args is None else args)),
            trainer_defaults={
                "callbacks": [
                    StepSeed(),
                    GradCamGrid(),
                    RunFiles(),
                    EpochHistory(),
                    SplitReports(),
                ]
            },
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
        )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if cli.start_from is not None:
        load_starting_weights(model, cli.start_from)
    if cli.config.pretraining.epochs:
        pretrain_backbone(cli, Pretraining(**vars(cli.config.pretraining)))
    try:
        # weights_only: a checkpoint handed over by someone else cannot run code when it is loaded
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    except SettingError as error:  # a callback's, when training starts (busi.callbacks.distillation)
        raise error.as_flags() from None
    except pickle.UnpicklingError:
        raise ResumeError(
            "refused to resume: the checkpoint holds pickled objects other than tensors and plain values; "
            "only resume from checkpoints written by busi's train.py"
        ) from None
    recipe = "+".join(Path(str(path)).stem for path in cli.config.get("config") or []) or "default"
    report = finish(trainer, model, datamodule, recipe)
    for callback in trainer.callbacks:
        if isinstance(callback, ResumeCheckpoint):
            callback.finished(trainer)
    return TrainingRun(trainer, model, datamodule, report)
