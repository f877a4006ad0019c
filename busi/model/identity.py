"""Which model answered: the SHA-256 of its checkpoint files, its recipe and input size, carried by every
answer busi gives outside a CSV (busi-serve's JSON, the DICOM results)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from busi import __version__


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identity(ckpt: Path, checkpoints: list[Path], summary: dict | None, image_size: int) -> dict:
    """The model that answered: its files' SHA-256 (one per fold model of a busi-cv folder), recipe, input size."""
    return {
        "checkpoint": str(ckpt),
        "sha256": [sha256(path) for path in checkpoints] if Path(ckpt).is_dir() else sha256(checkpoints[0]),
        "recipe": (summary or {}).get("recipe"),
        "image_size": image_size,
        "busi_version": __version__,
    }
