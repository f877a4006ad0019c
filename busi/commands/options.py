"""What every command shares: the spellings of its common options and how they become settings."""

from __future__ import annotations

import torch

from busi.errors import OptionError


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise OptionError(f"--device {name}: no such CUDA device on this machine; use --device cpu")
    return device
