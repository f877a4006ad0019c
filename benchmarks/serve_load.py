"""busi-serve under load, on loopback, bounded in requests and time: requests/s and p50/p95/p99 latency
at 1, 4 and 16 concurrent clients, errors, the service's peak memory (all its processes), with batching
on and off, beside `busi-predict` on the same images in the same run; then the fuzzed files of
benchmarks/fuzz_inputs.py sent over HTTP (answers by status, 5xx must be 0, memory before and after).

    python -m benchmarks.serve_load --ckpt RUN/checkpoints/best.ckpt [--root BUSI_ROOT] [--images 64]
        [--requests 96] [--concurrency 1 4 16] [--max_seconds 90]

The clients run on the same machine as the service (they share its cores), each with its own keep-alive
connection, sending the images' bytes as request bodies in turn.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks.fuzz_inputs import BUSI, mutate, seed_files

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from service import running_service  # noqa: E402


def rss_mib(group: int) -> float:
    """Resident memory of every process in the process group `group` (the service, its workers, its queue)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != group:
                continue
            with open(f"/proc/{entry}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


class PeakMemory:
    def __init__(self, group: int):
        self.group, self.peak, self._stop = group, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.group))
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load(url: str, bodies: list[bytes], requests_total: int, concurrency: int, max_seconds: float) -> dict:
    """`requests_total` POST /predict from `concurrency` clients (fewer if `max_seconds` runs out first)."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    deadline = time.monotonic() + max_seconds
    counter = iter(range(requests_total))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                start = time.perf_counter()
                try:
                    status = session.post(f"{url}/predict", data=bodies[index % len(bodies)], timeout=60).status_code
                except requests.RequestException:
                    status = "lost"
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses[status] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    seconds = time.perf_counter() - start
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(latencies),
        "per_second": len(latencies) / seconds,
        "p50": quantiles[49],
        "p95": quantiles[94],
        "p99": quantiles[98],
        "errors": sum(count for status, count in statuses.items() if status != 200),
    }


def predict_folder(ckpt: Path, folder: Path, images: int) -> float:
    """Images per second of one `busi-predict` over the folder, start-up included (as a user meets it)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "predict.py", "--ckpt", str(ckpt), str(folder), "--output", str(folder / "p.csv"), "--quiet"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return images / (time.perf_counter() - start)


def fuzz_over_http(url: str, folder: Path, group: int) -> str:
    files = sorted(folder.iterdir())
    before = rss_mib(group)
    statuses: Counter = Counter()
    with requests.Session() as session:
        for path in files:
            try:
                statuses[session.post(f"{url}/predict", data=path.read_bytes(), timeout=120).status_code] += 1
            except requests.RequestException:
                statuses["lost"] += 1
    alive = requests.get(f"{url}/health", timeout=10).status_code == 200
    server_errors = sum(count for status, count in statuses.items() if status == "lost" or status >= 500)
    return (
        f"fuzzed files over HTTP: {len(files)}, answers by status "
        + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items(), key=str))
        + f"; 5xx or lost: {server_errors}; healthy after: {alive}; memory {before:.0f} MiB before, "
        f"{rss_mib(group):.0f} MiB after"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint or busi-cv folder")
    parser.add_argument("--root", type=Path, default=BUSI, help="a BUSI-layout folder: the images sent")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max_seconds", type=float, default=90, help="per concurrency level")
    parser.add_argument("--max_batch_size", type=int, default=16, help="of the batching service")
    parser.add_argument("--fuzz_images", type=int, default=2, help="seed images per format for the fuzzed files")
    args = parser.parse_args(argv)
    images = sorted(p for p in args.root.rglob("*.png") if "_mask" not in p.name)[: args.images]
    bodies = [path.read_bytes() for path in images]
    print(f"{len(images)} images of {args.root}; {os.cpu_count()} CPUs; clients on the same machine")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "images"
        folder.mkdir()
        for index, path in enumerate(images):
            shutil.copy(path, folder / f"{index:04d}.png")
        print(
            f"busi-predict on the folder: {predict_folder(args.ckpt, folder, len(images)):.2f} images/s (start-up included)"
        )
        settings = {"batching on": [f"--max_batch_size={args.max_batch_size}"], "batching off": ["--max_batch_size=1"]}
        print(f"{'service':<14}{'clients':>8}{'requests':>9}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}"
              f"{'errors':>7}{'peak MiB':>9}")  # fmt: skip
        for name, options in settings.items():
            with running_service(args.ckpt, *options, "--max_queue=256") as service:
                group = os.getpgid(service.process.pid)
                load(service.url, bodies, 8, 1, 30)  # connections and caches warm
                for concurrency in args.concurrency:
                    with PeakMemory(group) as memory:
                        row = load(service.url, bodies, args.requests, concurrency, args.max_seconds)
                    print(
                        f"{name:<14}{concurrency:>8}{row['requests']:>9}{row['per_second']:>8.2f}{row['p50']:>8.3f}"
                        f"{row['p95']:>8.3f}{row['p99']:>8.3f}{row['errors']:>7}{memory.peak:>9.0f}",
                        flush=True,
                    )
                if name == "batching on":
                    seeds, fuzzed = Path(work) / "seeds", Path(work) / "fuzzed"
                    seeds.mkdir()
                    fuzzed.mkdir()
                    mutate(seed_files(args.root, args.fuzz_images, seeds), fuzzed, seed=0)
                    print(fuzz_over_http(service.url, fuzzed, group), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
