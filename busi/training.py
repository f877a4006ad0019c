"""`busi-train` / `python train.py`: one training run; BusiCLI builds it, it fits and finishes
(busi.finish) in its run directory, where it writes its split and audit when the fit starts."""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from busi.checkpointing import ResumeCheckpoint, StepSeed, load_starting_weights
from busi.cli import DEFAULT_CONFIG, BusiCLI, recipe_paths
from busi.data.audit import format_audit
from busi.data.module import BusiDataModule
from busi.data.splits import write_split_csv
from busi.distillation import TeacherTargets
from busi.errors import ResumeError, run_command
from busi.explain import GradCamGrid
from busi.finish import SplitReports, finish
from busi.history import EpochHistory
from busi.model import BusiClassifier


@dataclass
class TrainingRun:
    trainer: L.Trainer
    model: BusiClassifier
    datamodule: BusiDataModule
    report: dict | None  # busi.report.build_report's, on the main process; None without a test split

    @property
    def run_dir(self) -> Path | None:
        return Path(self.trainer.log_dir) if self.trainer.log_dir else None


class RunFiles(Callback):
    """`split.csv` (which image went where: a resumed run reads it back) and the dataset audit
    (`audit.json`, `audit.txt`), written into the run directory when the fit starts."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or log_dir is None or not isinstance(datamodule, BusiDataModule):
            return
        run_dir, counts = Path(log_dir), datamodule.split_counts()
        write_split_csv(run_dir / "split.csv", datamodule.split_rows())
        audit = datamodule.catalog.audit
        (run_dir / "audit.json").write_text(json.dumps({**audit, "splits": counts}, indent=2))
        (run_dir / "audit.txt").write_text(format_audit(audit, counts) + "\n", encoding="utf-8")


def run(args: list[str] | None = None) -> TrainingRun:
    """Train with busi-train's options (`args`; default: the command line) and finish the run."""
    with warnings.catch_warnings():  # args given from Python (busi.cv, tests) while sys.argv has its own
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = BusiCLI(
            BusiClassifier,
            BusiDataModule,
            run=False,
            args=recipe_paths(sys.argv[1:] if args is None else args),
            trainer_defaults={
                "callbacks": [
                    ResumeCheckpoint(),
                    StepSeed(),
                    GradCamGrid(),
                    RunFiles(),
                    EpochHistory(),
                    TeacherTargets(),
                    SplitReports(),
                ]
            },
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
        )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if cli.start_from is not None:
        load_starting_weights(model, cli.start_from)
    try:
        # weights_only: a checkpoint handed over by someone else cannot run code when it is loaded
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    except pickle.UnpicklingError:
        raise ResumeError(
            "refused to resume: the checkpoint holds pickled objects other than tensors and plain values; "
            "only resume from checkpoints written by busi's train.py"
        ) from None
    recipe = "+".join(Path(str(path)).stem for path in cli.config.get("config") or []) or "default"
    return TrainingRun(trainer, model, datamodule, finish(trainer, model, datamodule, recipe))


def main(args: list[str] | None = None) -> int:
    def train() -> None:
        run(args)

    return run_command(train)
