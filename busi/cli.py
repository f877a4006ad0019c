"""`busi-train` / `python train.py`: LightningCLI over BusiClassifier and BusiDataModule; then the best
checkpoint is calibrated, tested on every split and reported."""

from __future__ import annotations

import pickle
import signal
import sys
import warnings
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from busi import __version__
from busi.calibration import fit_temperature
from busi.checkpointing import AtomicCheckpointIO, ResumeCheckpoint, ResumeError, StepSeed, find_resume_checkpoint
from busi.data import BusiDataModule, DataError
from busi.explain import GradCamGrid, localisation_scores
from busi.inference import infer_loader
from busi.model import SUMMARY_KEY, BusiClassifier, OptionError, WeightsError
from busi.report import build_report, format_report, write_report

# BusiClassifier normalises uint8 batches on the device by design; Lightning warns whenever a
# LightningModule and a LightningDataModule could both do it.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=".*is not supported by the model summary.*")

RECIPES = Path(str(files("busi.configs")))  # configs/ in a checkout, busi/configs in an installed wheel
DEFAULT_CONFIG = RECIPES / "default.yaml"


def recipe_paths(args: list[str]) -> list[str]:
    """`--config scratch` → the packaged recipe's path; paths to files are left as they are."""

    def resolve(value: str) -> str:
        packaged = RECIPES / f"{value}.yaml"
        return str(packaged) if not Path(value).exists() and packaged.is_file() else value

    resolved = []
    for index, arg in enumerate(args):
        if arg.startswith("--config="):
            arg = "--config=" + resolve(arg.removeprefix("--config="))
        elif index and args[index - 1] == "--config":
            arg = resolve(arg)
        resolved.append(arg)
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN runs bf16 convolutions natively (elsewhere it emulates them, slowly)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def choose_precision(accelerator: str | None, freeze_backbone: bool) -> tuple[str, str]:
    """The precision busi trains in when `--trainer.precision` is not given, and why."""
    on_gpu = accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", "this GPU supports bfloat16"
        return "32-true", "this GPU has no bfloat16"
    if not freeze_backbone and cpu_has_native_bf16():
        return "bf16-mixed", "the whole network trains and this CPU computes bfloat16 natively"
    return "32-true", "frozen backbone on a CPU" if freeze_backbone else "this CPU has no native bfloat16"


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
            help="resume an interrupted run: `last` (the newest run), a run directory or RUN/checkpoints/last.ckpt",
        )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if any(isinstance(callback, WeightAveraging) for callback in trainer.callbacks):
            # Lightning puts the averaged weights into full checkpoints only: a weights-only best.ckpt
            # would hold the raw weights of the epoch that the averaged ones won on validation.
            for callback in trainer.checkpoint_callbacks:
                callback.save_weights_only = False
            rank_zero_info("weight averaging: best.ckpt holds the averaged weights (written as a full checkpoint)")
        return trainer

    def before_instantiate_classes(self) -> None:
        """Resume into the run's own directory: its TensorBoard curves continue, the best checkpoint is
        tracked across the interruption, and the run's split is reused."""
        config = self.config
        if config.trainer.precision is None:
            config.trainer.precision, why = choose_precision(config.trainer.accelerator, config.model.freeze_backbone)
            rank_zero_info(f"precision: {config.trainer.precision}, since {why}; set it with --trainer.precision")
        if not config.ckpt_path:
            return
        ckpt, run_dir = find_resume_checkpoint(config.ckpt_path, config.trainer.default_root_dir or ".")
        config.ckpt_path = str(ckpt)
        if run_dir is None:
            return
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(
                    save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name
                ),
            )
        if not config.data.split_csv and (run_dir / "split.csv").is_file():
            config.data.split_csv = str(run_dir / "split.csv")


def run(args: list[str] | None = None) -> LightningCLI:
    """Fit, fit the temperature of the best checkpoint (by validation macro-F1) on the validation split,
    test it on train, val and test, and write the report into the run directory (`cli.report`)."""
    with warnings.catch_warnings():  # args given from Python (busi.cv, tests) while sys.argv has its own
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = BusiCLI(
            BusiClassifier,
            BusiDataModule,
            run=False,
            args=recipe_paths(sys.argv[1:] if args is None else args),
            trainer_defaults={"callbacks": [ResumeCheckpoint(), StepSeed(), GradCamGrid()]},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
        )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    # weights_only: a checkpoint handed over by someone else cannot run code when it is loaded
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    temperature, best_state = calibrate(cli, Path(best)) if best else (None, None)
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    cli.report = None
    log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
    if "test" in model.test_splits and trainer.is_global_zero:
        test_images = [i for i, split in enumerate(datamodule.split_of) if split == "test"]
        cli.report = build_report(
            model.class_names,
            best or "weights in memory (no checkpoint was loaded)",
            model.test_splits,
            temperature,
            localisation_scores(model, datamodule.catalog, test_images),
        )
        if log_dir:
            experiment = getattr(model.logger, "experiment", None)
            experiment = experiment if hasattr(experiment, "add_image") else None
            write_report(cli.report, Path(log_dir), experiment, model.global_step)
        if best:
            best_state[SUMMARY_KEY] = model_summary(cli, cli.report)
            AtomicCheckpointIO().save_checkpoint(best_state, best)
        print(format_report(cli.report))
        print(f"\nRun directory: {log_dir}")
    return cli


def model_summary(cli: LightningCLI, report: dict) -> dict:
    """What a checkpoint is, what it was trained on and how it scored, kept inside it for the web app."""
    hparams, datamodule = cli.model.hparams, cli.datamodule
    test = report["splits"]["test"]
    recipes = [Path(str(path)).stem for path in cli.config.get("config") or []]
    return {
        "busi_version": __version__,
        "trained": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": "+".join(recipes) or "default",
        "image_size": hparams.image_size,
        "weights": str(hparams.weights),
        "freeze_backbone": hparams.freeze_backbone,
        "head": hparams.head,
        "data": {
            "root": str(datamodule.hparams.root),
            "per_class": {name: c["images"] for name, c in datamodule.catalog.audit["per_class"].items()},
            "splits": datamodule.split_counts(),
        },
        "test": {
            "images": test["samples"],
            "accuracy": test["accuracy"],
            "macro_f1": test["macro_f1"],
            "recall": {name: values["recall"] for name, values in test["per_class"].items()},
            "ece": test["ece"],
            "temperature": report.get("temperature", 1.0),
            **({"segmentation": test["segmentation"]} if "segmentation" in test else {}),
        },
    }


TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "current_model_state", "averaging_state")


def calibrate(cli: LightningCLI, best: Path) -> tuple[float, dict]:
    """Fit the temperature of the best checkpoint on the validation split and store it in the file;
    returns the temperature and the checkpoint as written."""
    model, trainer = cli.model, cli.trainer
    state = torch.load(best, map_location="cpu", weights_only=True)
    for key in TRAINING_STATE_KEYS:  # present when weight averaging made best.ckpt a full checkpoint
        state.pop(key, None)
    model.load_state_dict(state["state_dict"])
    outputs, targets = infer_loader(model.eval(), cli.datamodule.val_dataloader())
    temperature = fit_temperature(outputs.logits, targets)
    state["state_dict"]["temperature"] = torch.tensor(temperature)
    if trainer.is_global_zero:
        AtomicCheckpointIO().save_checkpoint(state, best)
    trainer.strategy.barrier()  # every process tests the rewritten file
    return temperature, state


# Errors whose message tells the user what to change: printed as one line, exit status 2.
USER_ERRORS = (DataError, WeightsError, ResumeError, OptionError)


def main(args: list[str] | None = None) -> int:
    try:
        run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError:
        print(
            "error: refused to resume: the checkpoint holds pickled objects other than tensors and plain values; "
            "only resume from checkpoints written by busi's train.py",
            file=sys.stderr,
        )
        return 2
    except SIGTERMException:
        return 128 + signal.SIGTERM  # the state is saved in last.ckpt (ResumeCheckpoint)
    return 0
