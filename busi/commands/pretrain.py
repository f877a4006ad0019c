"""`busi-pretrain --data.root FOLDER --pretraining.epochs N --output backbone.pt`: self-supervised
pretraining (SimCLR) of the DenseNet121 backbone on a split's training images, without their labels;
`busi-train --model.weights backbone.pt` trains on it. The split is busi-train's for the same data
options (seed, fractions or fold, or a run's split.csv)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from busi.commands.options import command_parser, parse
from busi.errors import OptionError, SettingError, run_command
from busi.training.pretraining_settings import Pretraining

SPLIT_OPTIONS = {  # BusiDataModule's options that decide which images are in the train split
    "--data.image_size": {"type": int, "default": 256, "help": "images are resized to this square side"},
    "--data.seed": {"type": int, "default": 42, "help": "seed of the split"},
    "--data.val_fraction": {"type": float, "default": 0.15, "help": "share of each class in validation"},
    "--data.test_fraction": {"type": float, "default": 0.15, "help": "share of each class in test"},
    "--data.folds": {"type": int, "default": 0, "help": "k-fold cross-validation's k (0: the fractions)"},
    "--data.fold": {"type": int, "default": 0, "help": "which fold is tested (the next one validates)"},
    "--data.split_csv": {"type": str | None, "default": None, "help": "a run's split.csv: its train images"},
    "--data.duplicate_distance": {"type": int, "default": 10, "help": "near-duplicates' hash distance"},
    "--data.overlays": {"choices": ["keep", "inpaint"], "default": "keep", "help": "inpaint drawn marks first"},
}


def parser():
    parser = command_parser(
        "busi-pretrain",
        "Self-supervised pretraining (SimCLR) of the DenseNet121 backbone on a split's training images, without "
        "their labels; train on it with busi-train --model.weights OUTPUT.",
        "--data.root",
        "--output",
        output={"type": Path, "default": Path("backbone.pt"), "help": "the backbone file to write"},
    )
    for name, settings in SPLIT_OPTIONS.items():
        parser.add_argument(name, **settings)
    parser.add_class_arguments(Pretraining, "pretraining")
    parser.add_argument("--seed_everything", type=int, default=42, help="the training seed")
    parser.add_argument("--accelerator", default="auto", help="Lightning's accelerator: auto, cpu, gpu")
    return parser


def pretrain_command(args) -> None:
    if not args.pretraining.epochs:
        raise OptionError("--pretraining.epochs: give how many passes over the training images, e.g. 50")
    try:
        settings = Pretraining(**vars(args.pretraining))
    except SettingError as error:
        raise error.as_flags() from None
    # imported here, not above: --help and option errors come before torch and Lightning load
    import lightning as L

    from busi.data.module import BusiDataModule
    from busi.training.pretraining import pretrain

    L.seed_everything(args.seed_everything)
    datamodule = BusiDataModule(**{**vars(args.data), "root": str(args.data.root)})
    made = pretrain(datamodule, settings, args.output, accelerator=args.accelerator, log_dir=args.output.parent)
    print(json.dumps(made, indent=2))
    print(f"Backbone: {args.output}  (train on it: busi-train --model.weights {args.output} …)")


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    return run_command(lambda: pretrain_command(args))


if __name__ == "__main__":
    sys.exit(main())
