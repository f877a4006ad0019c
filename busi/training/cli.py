"""BusiCLI: LightningCLI wired for busi (recipes, the checkpoint callback, the precision, resuming into
the run's own directory), and Lightning's own messages kept to what busi's users need."""

from __future__ import annotations

import logging
import tempfile
import warnings
from importlib.resources import files
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from busi.callbacks.checkpointing import ResumeCheckpoint
from busi.callbacks.distillation import Distillation
from busi.callbacks.finetuning import BackboneUnfreezing
from busi.data.catalog import check_data_root
from busi.errors import OptionError, SettingError
from busi.model.answering import cpu_has_native_bf16
from busi.model.migration import MOVED, TO_CALLBACKS, is_old_value
from busi.training.checkpointing import (
    ARCHITECTURE,
    AtomicCheckpointIO,
    find_resume_checkpoint,
    starting_hyperparameters,
)
from busi.training.pretraining_settings import Pretraining

warnings.filterwarnings("ignore", message=".*is not supported by the model summary.*")


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


# Lightning advertises its cloud services ("💡 Tip: … litlogger …") on every run.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_not_an_advertisement)

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


def current_flag(flag: str, value: str | None) -> str | None:
    """Today's spelling of an earlier busi version's `--model.*` flag (busi.model.migration), or None."""
    name = flag.removeprefix("--model.")
    if name == flag:
        return None
    if name in TO_CALLBACKS:
        return "--" + TO_CALLBACKS[name]
    if is_old_value(name, value if value is None or not value.lstrip().startswith("{") else {}):
        return "--model." + MOVED[name]
    return None


def current_recipe(path: str) -> str:
    """A recipe written with earlier busi versions' model settings, rewritten into a temporary copy in
    today's form (with a warning); a current recipe's path comes back as it is."""
    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return path  # jsonargparse reports it
    model = recipe.get("model") if isinstance(recipe, dict) else None
    if not isinstance(model, dict):
        return path
    old = [name for name, value in model.items() if name in TO_CALLBACKS or is_old_value(name, value)]
    if not old:
        return path
    values = {name: model.pop(name) for name in old}  # first: `optimizer` is an old setting and a group
    for name, value in values.items():
        group, setting = (TO_CALLBACKS.get(name) or MOVED[name]).split(".")
        owner = recipe if name in TO_CALLBACKS else model
        owner.setdefault(group, {})[setting] = value
    rank_zero_info(
        f"warning: {path} spells {', '.join('model.' + name for name in old)} as earlier busi versions did; "
        f"read as {', '.join(TO_CALLBACKS.get(name) or 'model.' + MOVED[name] for name in old)} (docs/training.md)"
    )
    with tempfile.NamedTemporaryFile("w", suffix=f"_{Path(path).name}", delete=False, encoding="utf-8") as handle:
        yaml.safe_dump(recipe, handle, sort_keys=False)
    return handle.name


def current_spellings(args: list[str]) -> list[str]:
    """busi-train's arguments with earlier versions' model flags and recipes in today's spelling, each
    rewritten with a one-line warning: `--model.lr` is `--model.optimizer.lr`, `--model.teacher` is
    `--distillation.teacher`, … (busi.model.migration)."""
    current = []
    for index, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        following = args[index + 1] if index + 1 < len(args) else None
        if flag == "--config" and equals:
            arg = "--config=" + current_recipe(value)
        elif index and args[index - 1] == "--config":
            arg = current_recipe(arg)
        elif flag.startswith("--model."):
            new = current_flag(flag, value if equals else following)
            if new is not None:
                rank_zero_info(f"warning: {flag} is now {new}; the old spelling still works")
                arg = new + equals + value
        current.append(arg)
    return current


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


RUN_DIRECTORY_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # Trainer.log_dir is theirs; any other: save_dir


def run_directory_logger(config: Namespace, resumed: Path | None) -> Namespace:
    """TensorBoard in the run directory: a new lightning_logs/version_N, or the resumed run's own."""
    if resumed is None:
        init = Namespace(save_dir=str(config.trainer.default_root_dir or "."))
    else:
        init = Namespace(save_dir=str(resumed.parent.parent), name=resumed.parent.name, version=resumed.name)
    return Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=init)


def with_run_directory(logger, tensorboard: Namespace):
    """The run's loggers with TensorBoard first, where busi's run directory (checkpoints, split, report)
    is; other loggers (MLflow, W&B, …) come after it and get the same metrics, and the report's files
    where they take files (busi.evaluation.publish). `--trainer.logger false` stays without loggers."""
    if logger is False:
        return False
    if logger in (None, True):
        return tensorboard
    loggers = logger if isinstance(logger, list) else [logger]
    first = getattr(loggers[0], "class_path", "") if loggers else ""
    if first.rsplit(".", 1)[-1] in RUN_DIRECTORY_LOGGERS:
        return loggers
    return [tensorboard, *loggers]


class BusiCLI(LightningCLI):
    start_from: Path | None = None  # a weights-only checkpoint to fine-tune from (busi.training.run loads it)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # training callbacks with their own options: --distillation.teacher, --finetuning.unfreeze_backbone_at_epoch
        parser.add_lightning_class_args(Distillation, "distillation")
        parser.add_lightning_class_args(BackboneUnfreezing, "finetuning")
        parser.add_lightning_class_args(ResumeCheckpoint, "resume")  # last.ckpt: --resume.keep_when_finished
        parser.add_class_arguments(Pretraining, "pretraining")  # --pretraining.epochs: busi.training.pretraining
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
        parser.link_arguments("data.overlays", "model.overlays")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume an interrupted run: `last` (the newest run), a run directory or RUN/checkpoints/last.ckpt; "
            "or fine-tune, in a new run, from a weights-only checkpoint (RUN/checkpoints/best.ckpt, busi-import-keras's)",
        )

    def instantiate_classes(self) -> None:
        """The model's and callbacks' own errors about their settings, spoken as this command's flags."""
        try:
            super().instantiate_classes()
        except SettingError as error:
            raise error.as_flags({"image_size": "--data.image_size"}) from None

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
        """Check the data folder before the network is built (and its weights fetched); choose the
        precision; resume into the run's own directory: its TensorBoard curves continue, the best
        checkpoint is tracked across the interruption, and the run's split is reused."""
        config = self.config
        if not config.data.download:  # else BusiDataModule.prepare_data fetches it
            check_data_root(Path(config.data.root))
        if config.trainer.precision is None:
            config.trainer.precision, why = choose_precision(config.trainer.accelerator, config.model.freeze_backbone)
            rank_zero_info(f"precision: {config.trainer.precision}, since {why}; set it with --trainer.precision")
        if config.finetuning.unfreeze_backbone_at_epoch and config.model.freeze_backbone:
            raise OptionError(
                f"--finetuning.unfreeze_backbone_at_epoch {config.finetuning.unfreeze_backbone_at_epoch} unfreezes the "
                "backbone that --model.freeze_backbone true keeps frozen; add --model.freeze_backbone false"
            )
        resumed = self.resume_or_fine_tune() if config.ckpt_path else None
        untrained = config.model.weights is None or str(config.model.weights).lower() == "none"
        if untrained and config.model.freeze_backbone and self.start_from is None:
            rank_zero_info(
                "warning: --model.weights none with a frozen backbone: only the head trains, on the features of a "
                "random network; to learn without pretrained weights train the whole network: --config scratch"
            )
        config.trainer.logger = with_run_directory(config.trainer.logger, run_directory_logger(config, resumed))

    def resume_or_fine_tune(self) -> Path | None:
        """The run directory of the run to resume (its split reused), or None."""
        config = self.config
        ckpt, run_dir = find_resume_checkpoint(config.ckpt_path, config.trainer.default_root_dir or ".")
        config.ckpt_path = str(ckpt)
        hparams = starting_hyperparameters(ckpt)
        if hparams is not None:
            self.fine_tune_from(ckpt, hparams, run_dir)
            return None
        if run_dir is not None and not config.data.split_csv and (run_dir / "split.csv").is_file():
            config.data.split_csv = str(run_dir / "split.csv")
        return run_dir

    def fine_tune_from(self, ckpt: Path, hparams: dict, run_dir: Path | None) -> None:
        """A new run that starts from `ckpt`'s weights: its network's shape and input preprocessing come
        with them, and a busi run's split (when beside it) is kept, so no test image becomes a training one."""
        config = self.config
        self.start_from, config.ckpt_path = ckpt, None
        config.model.weights = "none"  # the checkpoint's weights replace any others
        config.data.image_size = hparams.get("image_size", config.data.image_size)
        for key in ARCHITECTURE:
            if key in hparams:
                config.model[key] = tuple(hparams[key]) if key == "class_names" else hparams[key]
        split = run_dir / "split.csv" if run_dir is not None else None
        if not config.data.split_csv and split is not None and split.is_file():
            config.data.split_csv = str(split)
        rank_zero_info(
            f"fine-tuning from {ckpt}: its weights, {config.data.image_size} px, {config.model.head} head, "
            f"{config.model.preprocessing} preprocessing"
            + (f", its run's split ({config.data.split_csv})" if config.data.split_csv else "")
        )
