"""BusiDataModule: a BUSI-layout folder → audited, duplicate-aware, stratified train/val/test loaders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler

from busi import CLASS_NAMES
from busi.data.audit import format_audit
from busi.data.cache import default_cache_dir
from busi.data.catalog import Catalog, read_catalog, warn
from busi.data.dataset import ClassBalancedSampler, ClassRepeatSampler, ImageTensors
from busi.data.download import OFFICIAL_URL, download_busi
from busi.data.splits import CALIBRATION, SPLIT_NAMES, assign_groups, carve_calibration, fold_splits, read_split_csv
from busi.errors import DataError

SAMPLERS = {"balanced": ClassBalancedSampler, "oversample": ClassRepeatSampler}


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
        folds: k-fold cross-validation (`python -m busi.commands.cv` sets it): 0 for the fractions above;
            k ≥ 3 for fold `fold`: test = that fold, val = the next one, train = the rest.
        fold: which fold, 0 … folds-1.
        sampling: `shuffle` (every training image once per epoch), `balanced` (as many draws, with
            replacement, each class equally likely: ClassBalancedSampler) or `oversample` (each image
            round(1 / its class's share) times per epoch, so epochs are longer: ClassRepeatSampler).
        overlays: `keep` the marks sonographers draw (calipers, lines, text, colour) or `inpaint` them
            on every image before it is used (busi.io.overlays); the audit counts them either way.
        calibration_fraction: the share of the validation split (whole duplicate groups, stratified) kept
            apart to fit the temperature and the prediction sets only, so that the images that pick the
            epoch do not also promise the coverage; 0: the validation split does both.
        download: fetch and unpack the dataset's archive into `root` when it is not there
            (busi.data.download; busi-download does the same on its own).
        download_url: where the archive is: the official one, or a mirror.
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
        sampling: Literal["shuffle", "balanced", "oversample"] = "shuffle",
        overlays: Literal["keep", "inpaint"] = "keep",
        calibration_fraction: float = 0.0,
        download: bool = False,
        download_url: str = OFFICIAL_URL,
    ):
        super().__init__()
        if not 0 <= calibration_fraction < 1:
            raise DataError(
                f"calibration_fraction {calibration_fraction}: give a share of the validation split in [0, 1)"
            )
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise DataError(
                f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in (0, 1) and sum below 1"
            )
        self.save_hyperparameters()
        self.class_names = CLASS_NAMES
        self.catalog: Catalog | None = None
        self.split_of: list[str] = []

    def prepare_data(self) -> None:
        if self.hparams.download:  # Lightning calls this on one process per machine, before `setup`
            download_busi(Path(self.hparams.root), self.hparams.download_url)

    def setup(self, stage: str) -> None:
        if self.catalog is not None:
            return
        hp = self.hparams
        cache_dir = default_cache_dir() if hp.cache_dir == "auto" else hp.cache_dir and Path(hp.cache_dir)
        catalog = read_catalog(
            Path(hp.root), hp.image_size, hp.duplicate_distance, self.class_names, cache_dir, hp.memory_limit_mb,
            overlays=hp.overlays,
        )  # fmt: skip
        self.catalog, self.split_of = self._split(catalog)
        counts = self.split_counts()
        for split, per_class in counts.items():
            empty = [name for name, n in per_class.items() if n == 0]
            if empty:
                warn(f"the {split} split has no {', '.join(empty)} images; its metrics for them are undefined")
        rank_zero_info(format_audit(self.catalog.audit, counts))

    def _split(self, catalog: Catalog) -> tuple[Catalog, list[str]]:
        """The catalog to train on and each image's split: from the split CSV, the fold, or the fractions
        (and the calibration share carved out of the validation split)."""
        catalog, splits = self._splits(catalog)
        if self.hparams.calibration_fraction and not self.hparams.split_csv:
            labels = [r.label for r in catalog.records]
            splits = carve_calibration(
                splits, catalog.groups, labels, self.hparams.calibration_fraction, self.hparams.seed
            )
        return catalog, splits

    def _splits(self, catalog: Catalog) -> tuple[Catalog, list[str]]:
        hp = self.hparams
        labels = [r.label for r in catalog.records]
        if hp.split_csv:
            return catalog_from_split_csv(catalog, Path(hp.split_csv), self.class_names)
        if hp.folds:
            try:
                return catalog, fold_splits(catalog.groups, labels, hp.folds, hp.fold, hp.seed)
            except ValueError as error:
                raise DataError(f"--data.folds/--data.fold: {error}") from None
        fractions = (1 - hp.val_fraction - hp.test_fraction, hp.val_fraction, hp.test_fraction)
        return catalog, [SPLIT_NAMES[p] for p in assign_groups(catalog.groups, labels, fractions, hp.seed)]

    def split_counts(self) -> dict[str, dict[str, int]]:
        names = (*SPLIT_NAMES, CALIBRATION) if CALIBRATION in self.split_of else SPLIT_NAMES
        counts = {split: dict.fromkeys(self.class_names, 0) for split in names}
        for record, split in zip(self.catalog.records, self.split_of, strict=True):
            counts[split][self.class_names[record.label]] += 1
        return counts

    def split_rows(self) -> list[tuple[str, str, str, int]]:
        catalog = self.catalog
        return [
            (catalog.relative(i), self.class_names[r.label], self.split_of[i], catalog.groups[i])
            for i, r in enumerate(catalog.records)
        ]

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
            if hp.sampling in SAMPLERS:
                labels = [self.catalog.records[i].label for i in dataset.indices]
                sampler = SAMPLERS[hp.sampling](dataset, labels, num_replicas=replicas, rank=rank, seed=seed)
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


def catalog_from_split_csv(catalog: Catalog, path: Path, class_names: tuple[str, ...]) -> tuple[Catalog, list[str]]:
    """The images a split CSV lists (with its splits and duplicate groups), checked against the folder."""
    entries = read_split_csv(path)
    present = {catalog.relative(i): i for i in range(len(catalog.records))}
    missing = sorted(set(entries) - present.keys() - {u["path"] for u in catalog.audit["unreadable"]})
    if missing:
        raise DataError(
            f"{path}: {len(missing)} listed images are not under {catalog.root} (first: {missing[0]}); pass the matching --data.root"
        )
    unlisted = sorted(present.keys() - entries.keys())
    if unlisted:
        warn(f"{len(unlisted)} images under {catalog.root} are not in {path} and are left out (first: {unlisted[0]})")
    keep = sorted(present[p] for p in entries if p in present)
    for index in keep:
        label = entries[catalog.relative(index)][0]
        if label != class_names[catalog.records[index].label]:
            raise DataError(f"{path}: {catalog.relative(index)} is labelled {label} but lies in another class folder")
    listed = [entries[catalog.relative(i)] for i in keep]
    return catalog.subset(keep, groups=[group for _, _, group in listed]), [split for _, split, _ in listed]
