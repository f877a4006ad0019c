"""What every command shares: the spellings of its common options (`--ckpt`, `--data.root`, `--output`,
`--device`, `--batch_size`, `--quiet`), the old spellings they replace, and how they become settings."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ArgumentParser, Namespace

if TYPE_CHECKING:
    import torch

MAX_UPLOAD_MB = 50  # the web app's largest upload: busi-app gives it to Streamlit, the app checks it

SHARED = {
    "--ckpt": {
        "type": Path,
        "required": True,
        "help": "RUN/checkpoints/best.ckpt of a training run, or a busi-cv folder (its fold models answer as one)",
    },
    "--data.root": {"type": Path, "required": True, "help": "a labelled folder: benign/, malignant/, normal/"},
    "--output": {"type": Path | None, "default": None, "help": "where to write"},
    "--device": {"default": "auto", "help": "auto, cpu, cuda, cuda:1, …"},
    "--batch_size": {"type": int, "default": 32, "help": "images per forward pass"},
    "--quiet": {"action": "store_true", "help": "no progress bar (it is drawn only on a terminal anyway)"},
    "--malignant_threshold": {
        "type": str | None,
        "default": None,
        "help": "label malignant whenever p_malignant reaches this (an operating point: a number in [0, 1]), or "
        "`stored`: the one kept with the model; default: the most probable class",
    },
}


def command_parser(prog: str, description: str, *shared: str, **changed: dict) -> ArgumentParser:
    """A command's parser with the `shared` options in their common spellings; `changed` (keyed by the
    option's name without dashes, dots as underscores) replaces parts of an option's definition."""
    parser = ArgumentParser(prog=prog, description=description)
    for name in shared:
        settings = {**SHARED[name], **changed.get(name.lstrip("-").replace(".", "_"), {})}
        parser.add_argument(name, **settings)
    return parser


def parse(
    parser: ArgumentParser,
    argv: list[str] | None = None,
    renamed: dict[str, tuple[str, Callable[[str], str] | None]] | None = None,
) -> Namespace:
    """`parser.parse_args`, after the old spellings in `renamed` (old → (new, how the value changes))
    are turned into the new ones, each with one line saying which to use."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for old, (new, convert) in (renamed or {}).items():
        for index, arg in enumerate(argv):
            name, equals, value = arg.partition("=")
            if name != old:
                continue
            if not equals and index + 1 < len(argv):
                value = argv.pop(index + 1)
            shown = f"{new} {convert(value) if convert else value}"
            print(f"warning: {parser.prog}: {old} is now {new}; this run uses {shown}", file=sys.stderr)
            argv[index] = f"{new}={convert(value) if convert else value}"
    return parser.parse_args(argv)


def choose_device(name: str) -> torch.device:
    """--device as a torch.device, checked against this machine."""
    import torch  # here: --help and option errors of every command come before torch is imported

    from busi.errors import OptionError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise OptionError(f"--device {name}: no such CUDA device on this machine; use --device cpu")
    return device


def malignant_threshold(value: str | None) -> float | str | None:
    """--malignant_threshold as a number in [0, 1], `stored`, or None; OptionError otherwise."""
    from busi.errors import OptionError

    if value is None or value == "stored":
        return value
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not 0 <= threshold <= 1:
        raise OptionError(f"--malignant_threshold {value}: give a probability in [0, 1], or stored")
    return threshold


def operating_point(given: float | str | None, ckpt: Path, model) -> tuple[float | None, str]:
    """(threshold, where it comes from) of `--malignant_threshold` (malignant_threshold's value) for
    `model` loaded from `ckpt`: None when not given; OptionError when it cannot apply."""
    from busi.errors import OptionError
    from busi.evaluation.operating_point import stored_operating_point

    if given is None:
        return None, "the most probable class"
    if "malignant" not in model.class_names:
        raise OptionError(f"--malignant_threshold: {ckpt} has no malignant class ({', '.join(model.class_names)})")
    if given != "stored":
        return float(given), "given with --malignant_threshold"
    stored = stored_operating_point(ckpt, model.members[0].summary)
    if stored is None:
        raise OptionError(
            f"--malignant_threshold stored: {ckpt} holds no operating point (written by an older busi, or no "
            "malignant validation image); give a number in [0, 1]"
        )
    return stored
