"""Progress of long commands: a tqdm bar with images/s and the time left on a terminal; nothing when the
output goes to a file or a pipe, or with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(
    items: Iterable | None = None,
    total: int | None = None,
    what: str = "",
    quiet: bool = False,
    unit: str = "image",
    initial: int = 0,
) -> tqdm:
    """A bar over `items` (or updated by hand up to `total`, from `initial`), on stderr; tqdm draws it only
    when stderr is a terminal (`disable=None`), so logs of piped runs hold no carriage returns. Bytes
    (`unit="B"`) are shown as kB, MB, …"""
    return tqdm(
        items,
        total=total,
        initial=initial,
        desc=what,
        unit=unit,
        unit_scale=unit == "B",
        file=sys.stderr,
        disable=True if quiet else None,
        dynamic_ncols=True,
        leave=False,
    )


def say(line: str, error: bool = False) -> None:
    """Print a line without breaking a bar that is being drawn (tqdm.write clears and redraws it)."""
    tqdm.write(line, file=sys.stderr if error else sys.stdout)
