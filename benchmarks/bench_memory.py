"""Peak memory on a large folder: `python -m benchmarks.bench_memory [--images 20000] [--memory-limit-mb 256]`.

Writes a BUSI-layout folder of synthetic ultrasound-like PNGs once (`--workdir`), then trains a few
steps of the default recipe (no pretrained weights) in a fresh process per setting, each with an
empty image cache, and reports the process's peak resident memory (RSS) and wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from busi import CLASS_NAMES


def write_synthetic_folder(root: Path, count: int, side: int = 300, seed: int = 0) -> Path:
    """`count` distinct images (smooth texture plus speckle), spread over the class folders.
    Kept between calls: a folder already complete for these settings is reused."""
    done = root / f".complete-{count}-{side}-{seed}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.uniform(30, 220, size=(8, 8)).astype(np.uint8)
        texture = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
        speckle = rng.integers(-12, 13, size=(side, side), dtype=np.int16)
        pixels = np.clip(texture + speckle, 0, 255).astype(np.uint8)
        name = CLASS_NAMES[index % len(CLASS_NAMES)]
        Image.fromarray(pixels, "L").save(root / name / f"{name} ({index + 1}).png", compress_level=1)
    done.touch()
    return root


def train_args(root: Path, work: Path, image_size: int, memory_limit_mb: float, steps: int) -> list[str]:
    return [
        "--model.weights=none", f"--data.root={root}", f"--data.image_size={image_size}",
        f"--data.memory_limit_mb={memory_limit_mb}", f"--model.speed.feature_cache_mb={memory_limit_mb}",
        f"--data.cache_dir={work / 'cache'}", f"--trainer.default_root_dir={work / 'runs'}",
        "--trainer.max_epochs=1", f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip


def child(args: list[str]) -> int:
    """Train in this process, then print its peak RSS (and its DataLoader workers') as JSON."""
    from busi.training.run import run

    start = time.perf_counter()
    cli = run(args)
    usage = {
        "wall_s": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "images": len(cli.datamodule.catalog.records),
        "streamed_from_disk": cli.datamodule.catalog.streamed,
        "steps": cli.trainer.global_step,
    }
    print("BENCH " + json.dumps(usage))
    return 0


def measure(root: Path, image_size: int, memory_limit_mb: float, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "benchmarks.bench_memory", "--child"]
        command += train_args(root, Path(work), image_size, memory_limit_mb, steps)
        finished = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("BENCH ")]
    if finished.returncode or not lines:
        raise RuntimeError(f"benchmark run failed:\n{finished.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("BENCH "))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description="Peak memory of a short training run on a large folder.")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=300, help="side of the generated images")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--memory-limit-mb", type=float, default=256)
    parser.add_argument("--steps", type=int, default=20, help="training batches of 16")
    parser.add_argument("--unlimited", action="store_true", help="also measure without a limit, for comparison")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "busi-bench-memory")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = write_synthetic_folder(args.workdir / f"data-{args.images}-{args.side}px", args.images, args.side)
    print(f"{args.images} images of {args.side}×{args.side} px in {root} ({time.perf_counter() - start:.0f} s)")
    limits = [args.memory_limit_mb] + ([1e9] if args.unlimited else [])
    # a worker's RSS includes the pages it shares with the main process (forked): it does not add up
    print(f"{'memory_limit_mb':>16} {'in memory':>10} {'from disk':>10} {'steps':>6} {'peak RSS MiB':>13} "
          f"{'worker peak MiB':>16} {'wall s':>7}")  # fmt: skip
    for limit in limits:
        result = measure(root, args.image_size, limit, args.steps)
        label = "none" if limit >= 1e9 else f"{limit:g}"
        print(
            f"{label:>16} {result['images'] - result['streamed_from_disk']:>10} {result['streamed_from_disk']:>10} "
            f"{result['steps']:>6} {result['peak_rss_mib']:>13.0f} {result['worker_peak_rss_mib']:>16.0f} "
            f"{result['wall_s']:>7.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
