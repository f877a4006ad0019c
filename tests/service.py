"""A real busi-serve in a subprocess on a free loopback port, for the tests and the load benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url
        self.log: list[tuple[float, str]] = []  # (time.monotonic(), line) of its stderr
        self.health: list[tuple[float, int]] = []  # (time.monotonic(), status) of each /health asked while it started
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append((time.monotonic(), line.rstrip()))

    def lines(self) -> list[str]:
        return [line for _, line in self.log]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"busi-serve exited ({self.process.returncode}): " + "\n".join(self.lines()[-20:]))
            try:
                status = requests.get(f"{self.url}/health", timeout=2).status_code
            except requests.ConnectionError:
                status = 0  # not listening yet
            self.health.append((time.monotonic(), status))
            if status == 200:
                return
            time.sleep(0.1)
        raise TimeoutError("busi-serve not ready in time: " + "\n".join(self.lines()[-20:]))


@contextmanager
def running_service(ckpt: Path, *options: str, env: dict | None = None, timeout: float = 180) -> Iterator[Service]:
    """`busi-serve --ckpt CKPT OPTIONS` on a free loopback port until the block ends (then stopped)."""
    port = free_port()
    command = [sys.executable, "-m", "busi.commands.serve", "--ckpt", str(ckpt), "--port", str(port), *options]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its LitServe workers and queue manager stop with it
    )
    service = Service(process, f"http://127.0.0.1:{port}")
    try:
        service.wait_ready(timeout)
        yield service
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C to the service's process group (LitServe shuts its workers down), then SIGKILL to what is left."""
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait()
