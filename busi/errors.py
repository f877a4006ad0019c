"""Errors whose message tells the user what to change, and the one way every command reports them:
`error: …` on one line, exit status 2."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(ValueError):
    """Something the user gave cannot be used; the message names it and says what to do instead."""


class DataError(UserError):
    """The data folder or split file cannot be used as given."""


class WeightsError(UserError):
    """Weights or a checkpoint cannot be found, read or fitted to the model."""


class ResumeError(UserError):
    """The checkpoint to resume from cannot be found or trusted."""


class OptionError(UserError):
    """An option outside its range, or one that does not fit the rest."""


class SettingError(UserError):
    """A library object's setting outside its range, or one that does not fit the others. Setting names
    are written in braces (`{loss.label_smoothing} 1: must be below 1`): printed bare from the library,
    and as the command's flags by `as_flags` (`--model.loss.label_smoothing 1: …`)."""

    def __init__(self, message: str, owner: str = "model"):
        super().__init__(re.sub(r"\{([\w.]+)\}", r"\1", message))
        self.template, self.owner = message, owner  # owner: whose settings, e.g. model, distillation

    def as_flags(self, renamed: dict[str, str] | None = None) -> OptionError:
        """The same message with the settings as busi-train's flags, `--OWNER.SETTING` (`renamed`: flags of
        settings that the command takes under another name, e.g. image_size → --data.image_size)."""
        renamed = renamed or {}
        flag = lambda match: renamed.get(match[1], f"--{self.owner}.{match[1]}")  # noqa: E731
        return OptionError(re.sub(r"\{([\w.]+)\}", flag, self.template))


class UnreadableImageError(ValueError):
    """A file that cannot be decoded as an image: reported for that file (a CSV row, an audit line), and
    the command goes on with the others. The message names the file and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NotAnImageError(UnreadableImageError):
    """The bytes are not an image busi reads (an unknown format, a DICOM object without pixels)."""


class ImageTooLargeError(UnreadableImageError):
    """An image over the decoder's pixel limit (a decompression bomb, or simply too large to decode safely)."""


def run_command(command: Callable[[], int | None]) -> int:
    """The exit status of a console script: `command`'s, 2 after a UserError (printed as one line), 143
    after SIGTERM (the training state is saved in last.ckpt by busi.training.checkpointing.ResumeCheckpoint)."""
    try:
        return command() or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as error:
        # Lightning's SIGTERMException is a SystemExit; imported only now, so that a command's --help and
        # option errors come before Lightning (and torch) are loaded
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(error, SIGTERMException):
            return 128 + signal.SIGTERM
        raise
