"""Latency of the whole `predict.py` command, as a user meets it (interpreter start, imports,
checkpoint load, decode, forward, CSV): `python -m benchmarks.predict_latency --ckpt CKPT --image IMG
[--repeats 7] [--repo PATH …]`. `--image` may be a folder (every image in it, one command). With several
`--repo` checkouts (e.g. two git worktrees) or several `--ckpt` (e.g. a busi-cv folder, whose fold
models all answer, against one distilled checkpoint) their runs are interleaved, so that a change of
machine load hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_once(repo: Path, ckpt: Path, image: Path, output: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "predict.py", "--ckpt", str(ckpt), str(image), "--output", str(output)],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, action="append", required=True, help="checkpoint or busi-cv folder")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--repo", type=Path, action="append", help="checkout whose predict.py runs (default: this one)")
    args = parser.parse_args(argv)
    repos = args.repo or [Path(__file__).resolve().parent.parent]
    runs = [(repo, ckpt.resolve()) for repo in repos for ckpt in args.ckpt]
    seconds: dict[tuple[Path, Path], list[float]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):
            for index, (repo, ckpt) in enumerate(runs):
                seconds[repo, ckpt].append(time_once(repo, ckpt, args.image.resolve(), Path(work) / f"{index}.csv"))
    print(f"predict.py on {args.image}, {args.repeats} runs each (s): median [min, max]")
    for (repo, ckpt), values in seconds.items():
        print(f"  {repo} {ckpt}: {statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
