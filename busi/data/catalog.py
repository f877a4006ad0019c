"""The catalog of a BUSI-layout folder: its images and their masks found, decoded once (through the
decoded-image cache), grouped into duplicates and audited."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from busi import CLASS_NAMES, NORMAL
from busi.data.audit import build_audit
from busi.data.cache import DecodedImageCache
from busi.data.duplicates import group_duplicates
from busi.errors import DataError
from busi.io.images import (
    MASK_UNKNOWN,
    UnreadableImageError,
    file_format,
    is_hidden,
    is_image_file,
    is_mask,
    load_image,
    pack_mask,
    unpack_mask,
)
from busi.progress import progress_bar


@rank_zero_only
def warn(message: str) -> None:
    """One line on stderr, once per run (not a Python warning with its source line)."""
    print(f"warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int
    masks: tuple[Path, ...] = ()


@dataclass
class Catalog:
    """Every readable image under a root with its resized uint8 pixels: held in memory up to a limit,
    read again from the file beyond it."""

    root: Path
    image_size: int
    records: list[ImageRecord]
    pixels: list[torch.Tensor | None]  # None: read from the file when needed
    groups: list[int]
    digests: list[str]  # of the decoded pixels: identifies an image's content across datasets
    masks: list[bytes | None]  # lesion masks, 1 bit per pixel (busi.io.images.pack_mask); None: not known
    audit: dict = field(default_factory=dict)
    cache: DecodedImageCache | None = None
    overlaid: list[bool] = field(default_factory=list)  # marks drawn on each image (busi.io.overlays)
    overlays: str = "keep"  # what was done with them: keep, or inpaint

    def relative(self, index: int) -> str:
        return self.records[index].path.relative_to(self.root).as_posix()

    def image(self, index: int) -> torch.Tensor:
        pixels = self.pixels[index]
        return load_image(self.records[index].path, self.image_size, self.overlays) if pixels is None else pixels

    def mask(self, index: int) -> torch.Tensor:
        """uint8 (1, S, S): 1 on the lesion, 0 elsewhere, MASK_UNKNOWN everywhere when not known."""
        packed = self.masks[index]
        if packed is None:
            return torch.full((1, self.image_size, self.image_size), MASK_UNKNOWN, dtype=torch.uint8)
        return torch.from_numpy(unpack_mask(packed, self.image_size).astype(np.uint8))[None]

    @property
    def streamed(self) -> int:
        return sum(p is None for p in self.pixels)

    def subset(self, indices: list[int], groups: list[int] | None = None) -> Catalog:
        """A catalog of the images at `indices` (in that order), with new duplicate `groups` if given."""
        return dataclasses.replace(
            self,
            records=[self.records[i] for i in indices],
            pixels=[self.pixels[i] for i in indices],
            groups=[self.groups[i] for i in indices] if groups is None else list(groups),
            digests=[self.digests[i] for i in indices],
            masks=[self.masks[i] for i in indices],
            overlaid=[self.overlaid[i] for i in indices] if self.overlaid else [],
        )


def check_data_root(root: Path, class_names: tuple[str, ...] = CLASS_NAMES) -> None:
    """DataError unless `root` holds one folder per class: checked before anything is built or fetched."""
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found; fetch BUSI with busi-download (or add --data.download true), "
            "or pass --data.root pointing at the folder that holds benign/, malignant/ and normal/"
        )
    missing = [name for name in class_names if not (root / name).is_dir()]
    if missing:
        raise DataError(
            f"{root}: class folders {missing} are missing; expected one folder per class {list(class_names)}"
        )


def scan_class_folders(root: Path, class_names: tuple[str, ...] = CLASS_NAMES):
    """Find images and their masks (`X.png` → `X_mask.png`, `X_mask_1.png`, …) per class folder.

    Returns (records, masks without an image, ignored files, unknown folders beside the class folders).
    Hidden files and folders are ignored; symlinked files are followed, symlinked folders are not."""
    check_data_root(root, class_names)
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in class_names and p.name[0] != ".")
    records, orphan_masks, ignored = [], [], []
    for label, name in enumerate(class_names):
        folder = root / name
        entries = sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())
        files = [p for p in entries if not is_hidden(p, folder) and not p.is_dir()]
        kept = set(files)
        ignored += [p for p in entries if p not in kept]
        pictures = [p for p in files if is_image_file(p)]  # once: a file without extension is opened to tell
        images = [p for p in pictures if not is_mask(p)]
        if not images:
            raise DataError(f"{folder}: no images in this class folder; add its images or check --data.root")
        masks_by_stem: dict[tuple[Path, str], list[Path]] = defaultdict(list)
        for path in pictures:
            if is_mask(path):
                masks_by_stem[(path.parent, path.stem.split("_mask")[0])].append(path)
        ignored += sorted(kept - set(pictures))
        image_keys = {(p.parent, p.stem) for p in images}
        orphan_masks += [m for key, ms in masks_by_stem.items() if key not in image_keys for m in ms]
        records += [ImageRecord(p, label, tuple(masks_by_stem.get((p.parent, p.stem), ()))) for p in images]
    return records, orphan_masks, ignored, unknown


def read_catalog(
    root: Path,
    image_size: int,
    duplicate_distance: int,
    class_names: tuple[str, ...] = CLASS_NAMES,
    cache_dir: Path | None = None,
    memory_limit_mb: float | None = None,
    progress: bool = False,
    overlays: str = "keep",
) -> Catalog:
    """Decode every image once (or take it from the cache): resized pixels for training, hashes for
    duplicates, facts for the audit. Pixels beyond `memory_limit_mb` (and beyond the same size of
    on-disk cache) are not kept: those images are decoded from their files when a batch needs them.
    `progress`: a bar on a terminal (busi-cache, busi-evaluate; training has Lightning's); `overlays`
    inpaint: the marks drawn on the images replaced by their background (busi.io.overlays)."""
    candidates, orphan_masks, ignored, unknown = scan_class_folders(root, class_names)
    if unknown:
        warn(f"{root}: ignoring folders that are not a class ({', '.join(class_names)}): {', '.join(unknown)}")
    limit = None if memory_limit_mb is None else int(memory_limit_mb * 2**20)
    cache = DecodedImageCache(cache_dir, image_size, limit, overlays)
    records, decoded, unreadable = [], [], []
    held, full = 0, False
    for record in progress_bar(candidates, what="decode", quiet=not progress):
        try:
            image = cache.decode(record.path, need_pixels=not full)
        except UnreadableImageError as error:
            warn(f"skipping {error}")
            unreadable.append({"path": record.path.relative_to(root).as_posix(), "reason": str(error)})
            continue
        if image.pixels is not None and limit is not None and held + image.pixels.numel() > limit:
            full = True
            image.pixels = None
        held += 0 if image.pixels is None else image.pixels.numel()
        records.append(record)
        decoded.append(image)
    if not records:
        cache.close()
        raise DataError(f"{root}: no readable images in {list(class_names)}; check the folder and file types")
    masks, unreadable_masks = read_masks(records, decoded, class_names, cache, image_size, root)
    cache.close()
    digests = [d.digest for d in decoded]
    groups = group_duplicates(np.stack([d.phash for d in decoded]), digests, duplicate_distance)
    catalog = Catalog(root, image_size, records, [d.pixels for d in decoded], groups, digests, masks, cache=cache)
    catalog.overlaid, catalog.overlays = [d.overlaid for d in decoded], overlays
    sizes, modes = [d.size for d in decoded], Counter(d.mode for d in decoded)
    catalog.audit = build_audit(catalog, class_names, sizes, modes, unreadable, orphan_masks, ignored)
    catalog.audit["formats"] = dict(sorted(Counter(file_format(r.path) for r in records).items()))
    catalog.audit["unreadable_masks"] = unreadable_masks
    catalog.audit["unknown_folders"] = unknown
    catalog.audit["streamed_from_disk"] = catalog.streamed
    return catalog


def read_masks(records, decoded, class_names, cache: DecodedImageCache, image_size: int, root: Path):
    """Each image's target mask, packed: the union of its mask files; empty for normal images; None for
    a lesion image without mask files or with an unreadable one (never taken as "no lesion")."""
    empty = pack_mask(np.zeros((image_size, image_size), dtype=bool))
    masks, unreadable = [], []
    for record, image in zip(records, decoded, strict=True):
        if class_names[record.label] == NORMAL:
            masks.append(empty)
        elif not record.masks:
            masks.append(None)
        else:
            try:
                masks.append(cache.mask(record.masks, image))
            except UnreadableImageError as error:
                warn(f"{error}; {record.path.name} is left out of the segmentation loss")
                unreadable.append({"path": error.path.relative_to(root).as_posix(), "reason": str(error)})
                masks.append(None)
    return masks, unreadable
