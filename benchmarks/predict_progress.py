"""What the progress bar costs: `busi-predict` over a folder with its stderr on a terminal, with the bar
drawn and with `--quiet`, interleaved so that a change of machine load hits both alike.

    python -m benchmarks.predict_progress --ckpt RUN/checkpoints/best.ckpt --folder SCANS [--repeats 5]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_on_terminal(command: list[str], columns: int = 120) -> tuple[str, float]:
    """(what the command wrote to stderr, a pseudo-terminal of `columns` columns; its wall time in s)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return b"".join(chunks).decode(errors="replace"), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    images = sum(1 for p in args.folder.rglob("*.png") if "_mask" not in p.name)
    seconds: dict[str, list[float]] = {"bar": [], "quiet": []}
    with tempfile.TemporaryDirectory() as work:
        base = [sys.executable, "predict.py", "--ckpt", str(args.ckpt), str(args.folder), "--output", f"{work}/p.csv"]
        for _ in range(args.repeats):
            for mode in seconds:
                seconds[mode].append(run_on_terminal(base + (["--quiet"] if mode == "quiet" else []))[1])
    print(f"busi-predict over {images} images, {args.repeats} runs each, stderr on a terminal: median s [min, max]")
    for mode, values in seconds.items():
        median = statistics.median(values)
        print(f"  {mode:>5}: {median:.2f} [{min(values):.2f}, {max(values):.2f}]  {images / median:.1f} images/s")
    cost = statistics.median(seconds["bar"]) / statistics.median(seconds["quiet"]) - 1
    print(f"the bar costs {cost:+.1%} of the run time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
