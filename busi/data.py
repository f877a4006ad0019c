"""The BUSI folders: file discovery, decoding, the dataset audit, splits and the DataModule."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from busi import CLASS_NAMES, NORMAL
from busi.cache import DecodedImageCache, default_cache_dir
from busi.duplicates import group_duplicates
from busi.images import (
    MASK_UNKNOWN,
    UnreadableImageError,
    as_three_channels,
    is_hidden,
    is_image_file,
    is_mask,
    load_image,
    pack_mask,
    unpack_mask,
)
from busi.splits import SPLIT_NAMES, assign_groups, fold_splits, read_split_csv, write_split_csv

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data folder cannot be used as given; the message says what to change."""


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
    masks: list[bytes | None]  # lesion masks, 1 bit per pixel (busi.images.pack_mask); None: not known
    audit: dict = field(default_factory=dict)
    cache: DecodedImageCache | None = None

    def relative(self, index: int) -> str:
        return self.records[index].path.relative_to(self.root).as_posix()

    def image(self, index: int) -> torch.Tensor:
        pixels = self.pixels[index]
        return load_image(self.records[index].path, self.image_size) if pixels is None else pixels

    def mask(self, index: int) -> torch.Tensor:
        """uint8 (1, S, S): 1 on the lesion, 0 elsewhere, MASK_UNKNOWN everywhere when not known."""
        packed = self.masks[index]
        if packed is None:
            return torch.full((1, self.image_size, self.image_size), MASK_UNKNOWN, dtype=torch.uint8)
        return torch.from_numpy(unpack_mask(packed, self.image_size).astype(np.uint8))[None]

    @property
    def streamed(self) -> int:
        return sum(p is None for p in self.pixels)

    def keep_only(self, indices: list[int]) -> None:
        """Drop every image not in `indices`, keeping the per-image lists aligned."""
        self.records = [self.records[i] for i in indices]
        self.pixels = [self.pixels[i] for i in indices]
        self.groups = [self.groups[i] for i in indices]
        self.digests = [self.digests[i] for i in indices]
        self.masks = [self.masks[i] for i in indices]


def scan_class_folders(root: Path, class_names: tuple[str, ...] = CLASS_NAMES):
    """Find images and their masks (`X.png` → `X_mask.png`, `X_mask_1.png`, …) per class folder.

    Returns (records, masks without an image, ignored files, unknown folders beside the class folders).
    Hidden files and folders are ignored; symlinked files are followed, symlinked folders are not."""
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found; download BUSI (see README) and pass --data.root "
            "pointing at the folder that holds benign/, malignant/ and normal/"
        )
    missing = [name for name in class_names if not (root / name).is_dir()]
    if missing:
        raise DataError(
            f"{root}: class folders {missing} are missing; expected one folder per class {list(class_names)}"
        )
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in class_names and p.name[0] != ".")
    records, orphan_masks, ignored = [], [], []
    for label, name in enumerate(class_names):
        folder = root / name
        entries = sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())
        files = [p for p in entries if not is_hidden(p, folder) and not p.is_dir()]
        ignored += [p for p in entries if p not in files]
        images = [p for p in files if is_image_file(p) and not is_mask(p)]
        if not images:
            raise DataError(f"{folder}: no images in this class folder; add its images or check --data.root")
        masks_by_stem: dict[tuple[Path, str], list[Path]] = defaultdict(list)
        for path in files:
            if is_image_file(path) and is_mask(path):
                masks_by_stem[(path.parent, path.stem.split("_mask")[0])].append(path)
        ignored += [p for p in files if not is_image_file(p)]
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
) -> Catalog:
    """Decode every image once (or take it from the cache): resized pixels for training, hashes for
    duplicates, facts for the audit. Pixels beyond `memory_limit_mb` (and beyond the same size of
    on-disk cache) are not kept: those images are decoded from their files when a batch needs them."""
    candidates, orphan_masks, ignored, unknown = scan_class_folders(root, class_names)
    if unknown:
        warn(f"{root}: ignoring folders that are not a class ({', '.join(class_names)}): {', '.join(unknown)}")
    limit = None if memory_limit_mb is None else int(memory_limit_mb * 2**20)
    cache = DecodedImageCache(cache_dir, image_size, limit)
    records, decoded, unreadable = [], [], []
    held, full = 0, False
    for record in candidates:
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
    masks, unreadable_masks = read_masks(records, class_names, cache, image_size, root)
    cache.close()
    digests = [d.digest for d in decoded]
    groups = group_duplicates(np.stack([d.phash for d in decoded]), digests, duplicate_distance)
    catalog = Catalog(root, image_size, records, [d.pixels for d in decoded], groups, digests, masks, cache=cache)
    sizes, modes = [d.size for d in decoded], Counter(d.mode for d in decoded)
    catalog.audit = build_audit(catalog, class_names, sizes, modes, digests, unreadable, orphan_masks, ignored)
    catalog.audit["unreadable_masks"] = unreadable_masks
    catalog.audit["unknown_folders"] = unknown
    catalog.audit["streamed_from_disk"] = catalog.streamed
    return catalog


def read_masks(records, class_names, cache: DecodedImageCache, image_size: int, root: Path):
    """Each image's target mask, packed: the union of its mask files; empty for normal images; None for
    a lesion image without mask files or with an unreadable one (never taken as "no lesion")."""
    empty = pack_mask(np.zeros((image_size, image_size), dtype=bool))
    masks, unreadable = [], []
    for record in records:
        if class_names[record.label] == NORMAL:
            masks.append(empty)
        elif not record.masks:
            masks.append(None)
        else:
            try:
                masks.append(cache.mask(record.masks))
            except UnreadableImageError as error:
                warn(f"{error}; {record.path.name} is left out of the segmentation loss")
                unreadable.append({"path": error.path.relative_to(root).as_posix(), "reason": str(error)})
                masks.append(None)
    return masks, unreadable


def build_audit(catalog, class_names, sizes, modes, digests, unreadable, orphan_masks, ignored) -> dict:
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(catalog.groups):
        members[group].append(index)
    duplicate_groups = [indices for indices in members.values() if len(indices) > 1]
    conflicts = []
    for indices in duplicate_groups:
        labels = {catalog.records[i].label for i in indices}
        if len(labels) > 1:
            exact = len({digests[i] for i in indices}) < len(indices)
            conflicts.append(
                {
                    "paths": [catalog.relative(i) for i in indices],
                    "labels": [class_names[catalog.records[i].label] for i in indices],
                    "identical_pixels": exact,
                }
            )
    widths, heights = zip(*sizes, strict=True)
    relative = lambda paths: [p.relative_to(catalog.root).as_posix() for p in paths]  # noqa: E731
    return {
        "root": str(catalog.root),
        "images": len(catalog.records),
        "per_class": {
            name: {
                "images": sum(r.label == label for r in catalog.records),
                "with_masks": sum(r.label == label and bool(r.masks) for r in catalog.records),
                "masks": sum(len(r.masks) for r in catalog.records if r.label == label),
                "target_masks": sum(
                    r.label == label and m is not None for r, m in zip(catalog.records, catalog.masks, strict=True)
                ),
            }
            for label, name in enumerate(class_names)
        },
        "masks_per_image": dict(sorted(Counter(str(len(r.masks)) for r in catalog.records).items())),
        "size": {
            "min_width": min(widths),
            "max_width": max(widths),
            "min_height": min(heights),
            "max_height": max(heights),
        },
        "modes": dict(sorted(modes.items())),
        "duplicate_groups": [[catalog.relative(i) for i in indices] for indices in duplicate_groups],
        "conflicting_labels": conflicts,
        "unreadable": unreadable,
        "orphan_masks": relative(orphan_masks),
        "ignored_files": relative(ignored),
    }


def format_audit(audit: dict, split_counts: dict[str, dict[str, int]] | None = None) -> str:
    size = audit["size"]
    grouped = sum(len(group) for group in audit["duplicate_groups"])
    lines = [
        f"Dataset audit of {audit['root']}",
        f"  images: {audit['images']}  "
        + "  ".join(f"{name} {c['images']} ({c['masks']} masks)" for name, c in audit["per_class"].items()),
        "  masks per image: " + ", ".join(f"{k}: {v}" for k, v in audit["masks_per_image"].items()),
        f"  size: width {size['min_width']}-{size['max_width']}, height {size['min_height']}-{size['max_height']}"
        f"  modes: {audit['modes']}",
        f"  duplicate groups: {len(audit['duplicate_groups'])} holding {grouped} images (kept on one side of every split)",
        f"  conflicting labels: {len(audit['conflicting_labels'])}",
    ]
    for conflict in audit["conflicting_labels"]:
        kind = "identical pixels" if conflict["identical_pixels"] else "near-duplicates"
        pairs = ", ".join(f"{p} [{lab}]" for p, lab in zip(conflict["paths"], conflict["labels"], strict=True))
        lines.append(f"    {kind}: {pairs}")
    lines.append(f"  unreadable (skipped): {len(audit['unreadable'])}")
    lines += [f"    {item['reason']}" for item in audit["unreadable"]]
    if audit.get("unreadable_masks"):
        lines.append(
            f"  unreadable masks (image kept, left out of the segmentation loss): {len(audit['unreadable_masks'])}"
        )
        lines += [f"    {item['reason']}" for item in audit["unreadable_masks"]]
    without = {name: c["images"] - c["target_masks"] for name, c in audit["per_class"].items() if "target_masks" in c}
    if any(without.values()):
        lines.append(
            "  images without a lesion mask (left out of the segmentation loss): "
            + ", ".join(f"{name} {n}" for name, n in without.items() if n)
        )
    if audit["orphan_masks"]:
        lines.append(f"  masks without an image: {len(audit['orphan_masks'])}: {', '.join(audit['orphan_masks'][:5])}")
    if audit.get("unknown_folders"):
        lines.append(f"  ignored folders (not a class): {', '.join(audit['unknown_folders'])}")
    if audit.get("streamed_from_disk"):
        lines.append(f"  read from disk every epoch (beyond memory_limit_mb): {audit['streamed_from_disk']} images")
    if audit["ignored_files"]:
        lines.append(
            f"  ignored files (hidden, not an image): {len(audit['ignored_files'])}: {', '.join(audit['ignored_files'][:5])}"
        )
    if split_counts:
        for split, counts in split_counts.items():
            lines.append(
                f"  {split:>5}: {sum(counts.values()):4d}  " + "  ".join(f"{k} {v}" for k, v in counts.items())
            )
    return "\n".join(lines)


class ImageTensors(Dataset):
    """Some of a catalog's images as (uint8 3×H×W, label, key, uint8 1×H×W lesion mask): normalisation
    happens on the batch, on the training device (BusiClassifier.on_after_batch_transfer). The key, a
    digest of the decoded pixels, identifies the image for the frozen-backbone feature cache. The mask
    is 0/1, or MASK_UNKNOWN everywhere for a lesion image without a mask."""

    def __init__(self, catalog: Catalog, indices: list[int]):
        self.catalog = catalog
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str, torch.Tensor]:
        i = self.indices[index]
        catalog = self.catalog
        return as_three_channels(catalog.image(i)), catalog.records[i].label, catalog.digests[i], catalog.mask(i)


class ClassBalancedSampler(DistributedSampler):
    """An epoch of len(dataset) draws with replacement, each class equally likely: a function of
    (seed, epoch) only, so a resumed run draws what the uninterrupted one drew, and sharded over
    processes like DistributedSampler (Lightning leaves DistributedSampler subclasses unwrapped)."""

    def __init__(self, dataset: Dataset, labels: list[int], num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(draws[self.rank : self.total_size : self.num_replicas].tolist())


class BusiDataModule(L.LightningDataModule):
    """BUSI-layout folders → audited, duplicate-aware, stratified train/val/test loaders.

    Args:
        root: folder holding one sub-folder per class (benign/, malignant/, normal/).
        image_size: images are resized to image_size × image_size.
        batch_size: training batch size.
        eval_batch_size: batch size for validation, test and report passes.
        val_fraction: share of each class that goes to validation.
        test_fraction: share of each class that goes to test.
        seed: seed of the split (independent of the training seed).
        split_csv: a split CSV written by an earlier run, to reuse its split exactly.
        duplicate_distance: images whose perceptual hashes differ in at most this many of 64 bits
            are near-duplicates and stay in one split; -1 groups only identical pixels.
        cache_dir: folder of the decoded-image cache; `auto`: $BUSI_CACHE_DIR or ~/.cache/busi;
            null: decode every run.
        num_workers: DataLoader worker processes; null: chosen from the machine (0 without a GPU,
            where decoded images are served from memory faster than workers could).
        memory_limit_mb: decoded images held in memory, and in the on-disk cache, up to this size;
            beyond it images are decoded from their files every epoch (large folders).
        folds: k-fold cross-validation (`python -m busi.cv` sets it): 0 for the fractions above;
            k ≥ 3 for fold `fold`: test = that fold, val = the next one, train = the rest.
        fold: which fold, 0 … folds-1.
        sampling: `shuffle` (every training image once per epoch) or `balanced` (as many draws,
            with replacement, each class equally likely: ClassBalancedSampler).
    """

    def __init__(
        self,
        root: str = "data/Dataset_BUSI_with_GT",
        image_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 42,
        split_csv: str | None = None,
        duplicate_distance: int = 10,
        cache_dir: str | None = "auto",
        num_workers: int | None = None,
        memory_limit_mb: float = 4096,
        folds: int = 0,
        fold: int = 0,
        sampling: Literal["shuffle", "balanced"] = "shuffle",
    ):
        super().__init__()
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise DataError(
                f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in (0, 1) and sum below 1"
            )
        self.save_hyperparameters()
        self.class_names = CLASS_NAMES
        self.catalog: Catalog | None = None
        self.split_of: list[str] = []

    def setup(self, stage: str) -> None:
        if self.catalog is not None:
            return
        hp = self.hparams
        cache_dir = default_cache_dir() if hp.cache_dir == "auto" else hp.cache_dir and Path(hp.cache_dir)
        self.catalog = read_catalog(
            Path(hp.root), hp.image_size, hp.duplicate_distance, self.class_names, cache_dir, hp.memory_limit_mb
        )
        if hp.split_csv:
            self.split_of = self._splits_from_csv(Path(hp.split_csv))
        elif hp.folds:
            labels = [r.label for r in self.catalog.records]
            try:
                self.split_of = fold_splits(self.catalog.groups, labels, hp.folds, hp.fold, hp.seed)
            except ValueError as error:
                raise DataError(f"--data.folds/--data.fold: {error}") from None
        else:
            fractions = (1 - hp.val_fraction - hp.test_fraction, hp.val_fraction, hp.test_fraction)
            labels = [r.label for r in self.catalog.records]
            parts = assign_groups(self.catalog.groups, labels, fractions, hp.seed)
            self.split_of = [SPLIT_NAMES[p] for p in parts]
        counts = self.split_counts()
        for split, per_class in counts.items():
            empty = [name for name, n in per_class.items() if n == 0]
            if empty:
                warn(f"the {split} split has no {', '.join(empty)} images; its metrics for them are undefined")
        rank_zero_info(format_audit(self.catalog.audit, counts))
        self._write_run_files(counts)

    def _splits_from_csv(self, path: Path) -> list[str]:
        try:
            entries = read_split_csv(path)
        except ValueError as error:
            raise DataError(str(error)) from None
        catalog = self.catalog
        present = {catalog.relative(i): i for i in range(len(catalog.records))}
        missing = sorted(set(entries) - present.keys() - {u["path"] for u in catalog.audit["unreadable"]})
        if missing:
            raise DataError(
                f"{path}: {len(missing)} listed images are not under {catalog.root} (first: {missing[0]}); pass the matching --data.root"
            )
        unlisted = sorted(present.keys() - entries.keys())
        if unlisted:
            warn(
                f"{len(unlisted)} images under {catalog.root} are not in {path} and are left out (first: {unlisted[0]})"
            )
        keep = sorted(present[p] for p in entries if p in present)
        for index in keep:
            label = entries[catalog.relative(index)][0]
            if label != self.class_names[catalog.records[index].label]:
                raise DataError(
                    f"{path}: {catalog.relative(index)} is labelled {label} but lies in another class folder"
                )
        catalog.keep_only(keep)
        catalog.groups = [entries[catalog.relative(i)][2] for i in range(len(catalog.records))]
        return [entries[catalog.relative(i)][1] for i in range(len(catalog.records))]

    def split_counts(self) -> dict[str, dict[str, int]]:
        counts = {split: dict.fromkeys(self.class_names, 0) for split in SPLIT_NAMES}
        for record, split in zip(self.catalog.records, self.split_of, strict=True):
            counts[split][self.class_names[record.label]] += 1
        return counts

    def split_rows(self) -> list[tuple[str, str, str, int]]:
        catalog = self.catalog
        return [
            (catalog.relative(i), self.class_names[r.label], self.split_of[i], catalog.groups[i])
            for i, r in enumerate(catalog.records)
        ]

    def _write_run_files(self, counts) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        run_dir = Path(log_dir)
        write_split_csv(run_dir / "split.csv", self.split_rows())
        (run_dir / "audit.json").write_text(json.dumps({**self.catalog.audit, "splits": counts}, indent=2))
        (run_dir / "audit.txt").write_text(format_audit(self.catalog.audit, counts) + "\n", encoding="utf-8")

    def dataset(self, split: str) -> ImageTensors:
        return ImageTensors(self.catalog, [i for i, s in enumerate(self.split_of) if s == split])

    @property
    def num_workers(self) -> int:
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        # Batches from memory are copies of decoded uint8 tensors: workers only pay off feeding a
        # fast GPU, or decoding the images that are read from disk.
        streaming = self.catalog is not None and self.catalog.streamed > 0
        return min(4, (os.cpu_count() or 1) // 2) if torch.cuda.is_available() or streaming else 0

    def _processes(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        dataset = self.dataset(split)
        replicas, rank = self._processes()
        if shuffle:
            # One order per (seed, epoch), whatever happened before: a run resumed from an epoch
            # boundary sees the batches the uninterrupted run saw. Sharded over processes under DDP.
            seed = int(os.environ.get("PL_GLOBAL_SEED", hp.seed))
            if hp.sampling == "balanced":
                labels = [self.catalog.records[i].label for i in dataset.indices]
                sampler = ClassBalancedSampler(dataset, labels, num_replicas=replicas, rank=rank, seed=seed)
            else:
                sampler = DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
        elif replicas > 1:
            # Each image evaluated exactly once across processes (DistributedSampler would repeat some
            # to even out the ranks, and the synced metrics would count them twice).
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=hp.batch_size if shuffle else hp.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        """The report evaluates the chosen checkpoint on every split, in SPLIT_NAMES order."""
        return [self._loader(split, shuffle=False) for split in SPLIT_NAMES]


def cache_main(argv: list[str] | None = None) -> int:
    """`busi-cache --data.root DATA [--data.image_size 256]`: decode a folder once into the image cache."""
    parser = ArgumentParser(prog="busi-cache", description="Decode a BUSI-layout folder once into the image cache.")
    parser.add_argument("--data.root", type=Path, required=True, help="folder with benign/, malignant/, normal/")
    parser.add_argument("--data.image_size", type=int, default=256)
    parser.add_argument("--data.cache_dir", type=Path, default=default_cache_dir())
    data = parser.parse_args(argv).data
    try:
        catalog = read_catalog(data.root, data.image_size, duplicate_distance=-1, cache_dir=data.cache_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cache = catalog.cache
    size_mb = cache.path.stat().st_size / 2**20 if cache.path.is_file() else 0
    print(
        f"{len(catalog.records)} images: {cache.hits} from the cache, {cache.misses} decoded → {cache.path} ({size_mb:.1f} MiB)"
    )
    return 0
