"""`busi-train` / `python train.py`: one training run (busi.training.run)."""

from __future__ import annotations

import sys

from busi.errors import run_command
from busi.training.run import run


def main(args: list[str] | None = None) -> int:
    def train() -> None:
        run(args)

    return run_command(train)


if __name__ == "__main__":
    sys.exit(main())
