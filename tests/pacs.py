"""A real archive for the tests: Debian's Orthanc started on free ports with its own configuration and
storage, stopped at the end; and busi-node in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from service import free_port


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    ae_title: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def instances(self) -> list[str]:
        return requests.get(f"{self.url}/instances", timeout=10).json()

    def dataset(self, instance: str):
        import io

        import pydicom

        return pydicom.dcmread(io.BytesIO(requests.get(f"{self.url}/instances/{instance}/file", timeout=30).content))


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(requests.ConnectionError):
            if check():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout} s")


@contextmanager
def running_orthanc(folder: Path, node_port: int, node_ae: str = "BUSI") -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 ports (HTTP refused to other hosts; DICOM only from the node's address and AE)."""
    orthanc = Orthanc(free_port(), free_port())
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "busi-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": orthanc.http_port,
        "DicomPort": orthanc.dicom_port,
        "DicomAet": orthanc.ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"busi": [node_ae, "127.0.0.1", node_port], "test": ["STORESCU", "127.0.0.1", 104]},
        "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [shutil.which("Orthanc"), str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "orthanc.log").open("w"),
    )
    try:
        wait(lambda: requests.get(f"{orthanc.url}/system", timeout=2).ok, 60, "Orthanc")
        yield orthanc
    finally:
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        process.kill()


@contextmanager
def running_node(ckpt: Path, spool: Path, port: int, *options: str, log: Path) -> Iterator[subprocess.Popen]:
    """busi-node on 127.0.0.1:`port`, its log in `log`, until the block ends (or the test kills it)."""
    command = [sys.executable, "-m", "busi.commands.node", "--ckpt", str(ckpt), "--spool", str(spool)]
    handle = log.open("a")
    process = subprocess.Popen(
        [*command, "--port", str(port), *options], stdout=handle, stderr=handle, start_new_session=True
    )
    try:
        wait(lambda: echo(port) or process.poll() is not None, 120, "busi-node")
        if process.poll() is not None:
            raise RuntimeError(f"busi-node exited: {log.read_text()[-2000:]}")
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        handle.close()


def dcmtk(tool: str) -> str | None:
    """dcmtk's `tool` on the PATH (pynetdicom installs apps of the same names: not those)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30)
            if "dcmtk" in (version.stdout + version.stderr).lower():
                return str(candidate)
    return None


def echo(port: int, ae_title: str = "BUSI") -> bool:
    """dcmtk's echoscu: a C-ECHO answered."""
    done = subprocess.run([dcmtk("echoscu"), "-aec", ae_title, "127.0.0.1", str(port)], capture_output=True, timeout=30)
    return done.returncode == 0


def storescu(port: int, *files: Path, ae_title: str = "BUSI", propose: str = "-xy") -> subprocess.CompletedProcess:
    """dcmtk's storescu: the files sent in one association."""
    # -R: contexts for the files' own SOP classes (SEG is not in storescu's default list); -xy: JPEG baseline
    # proposed beside the uncompressed syntaxes (JPEG from a scanner is sent as it is); -xm: MPEG-2 video
    command = [
        dcmtk("storescu"),
        "-R",
        propose,
        "-aet",
        "STORESCU",
        "-aec",
        ae_title,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)
