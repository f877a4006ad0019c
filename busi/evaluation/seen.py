"""Which images of a folder a checkpoint has already seen: the training and validation splits of its run
(or of every fold of a busi-cv folder), matched by path under the training folder and by file content."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from busi.data.catalog import Catalog
from busi.data.splits import read_split_csv

SEEN = ("train", "val", "calibration")  # trained on, chose the epoch, or fitted the temperature and sets


def _content(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def run_split_files(ckpt: Path) -> list[Path]:
    """split.csv of the checkpoint's run, or of every fold of a busi-cv folder."""
    if ckpt.is_dir():
        return sorted(ckpt.glob("fold_*/lightning_logs/version_*/split.csv"))
    split_csv = ckpt.resolve().parent.parent / "split.csv"
    return [split_csv] if split_csv.is_file() else []


def seen_images(ckpt: Path, catalog: Catalog) -> dict[int, str] | None:
    """Catalog index → `train` or `val` for the images the checkpoint saw (`train` wins across folds); None
    when its run's split file is not beside it. An image counts as seen when its path relative to the
    folder is one the run trained on, or its bytes equal those of such a file (a copy elsewhere)."""
    files = run_split_files(ckpt)
    if not files:
        return None
    by_path: dict[str, str] = {}
    by_content: dict[str, str] = {}
    for split_csv in files:
        audit = split_csv.parent / "audit.json"
        root = Path(json.loads(audit.read_text(encoding="utf-8"))["root"]) if audit.is_file() else None
        for relative, (_, split, _) in read_split_csv(split_csv).items():
            if split not in SEEN or by_path.get(relative) == "train":
                continue
            by_path[relative] = split
            digest = _content(root / relative) if root is not None else None
            if digest is not None and by_content.get(digest) != "train":
                by_content[digest] = split
    seen = {}
    for index, record in enumerate(catalog.records):
        split = by_path.get(catalog.relative(index)) or by_content.get(_content(record.path) or "")
        if split:
            seen[index] = split
    return seen
