"""How long each command takes to answer `--help` and a refused option, as a user meets it (interpreter
start, imports, parsing): `python -m benchmarks.command_startup [--repeats 5] [--repo PATH …]`. With
several `--repo` checkouts their runs are interleaved, so that a change of machine load hits all alike."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "busi-predict --help": ["busi.commands.predict", "--help"],
    "busi-evaluate --help": ["busi.commands.evaluate", "--help"],
    "busi-cv --help": ["busi.commands.cv", "--help"],
    "busi-cv --folds 2 (refused)": ["busi.commands.cv", "--folds", "2"],
    "busi-explain --help": ["busi.commands.explain", "--help"],
    "busi-export --help": ["busi.commands.export", "--help"],
    "busi-cache --help": ["busi.commands.cache", "--help"],
    "busi-download --help": ["busi.commands.download", "--help"],
    "busi-import-keras --help": ["busi.commands.import_keras", "--help"],
    "busi-app --help": ["busi.commands.app_launch", "--help"],
    "busi-serve --help": ["busi.commands.serve", "--help"],
    "busi-train --help": ["busi.commands.train", "--help"],
}


def time_once(repo: Path, argv: list[str]) -> float | None:
    """Seconds until the command has answered; None when the checkout has no such command."""
    start = time.perf_counter()
    module, *options = argv
    # what the console script runs (its entry point), with this checkout's busi first on the path
    script = f"import sys; from {module} import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", script, *options], cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if f"No module named '{module}'" in done.stderr:
        return None
    if "usage:" not in done.stdout + done.stderr and "error:" not in done.stderr:
        raise SystemExit(f"{repo}: {module} {' '.join(options)} printed neither its usage nor an error")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, action="append", help="checkout to run in (default: this one)")
    args = parser.parse_args(argv)
    repos = args.repo or [Path(__file__).resolve().parent.parent]
    seconds = {(repo, name): [] for name in COMMANDS for repo in repos}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            for repo in repos:
                seconds[repo, name].append(time_once(repo, command))
    print(f"seconds to answer, {args.repeats} runs each: median [min, max]")
    for (repo, name), values in seconds.items():
        if None in values:
            print(f"  {name:<30} {repo}: (no such command)")
        else:
            print(f"  {name:<30} {repo}: {statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
