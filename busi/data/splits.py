"""Stratified, duplicate-aware assignment of images to splits, and the split CSV."""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from busi.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
CALIBRATION = "calibration"  # optional: fits the temperature and the prediction sets, never trains or picks
ALL_SPLITS = (*SPLIT_NAMES, CALIBRATION)
SPLIT_CSV_COLUMNS = ("path", "label", "split", "group")


def group_label(labels: Sequence[int]) -> int:
    """A group is stratified under its most common label (ties: the lowest class index)."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def assign_groups(groups: Sequence[int], labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[int]:
    """Give each image a part index so that whole groups move together and every class is
    spread over the parts in proportion to `fractions` (greedy largest-deficit filling)."""
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    by_class: dict[int, list[int]] = defaultdict(list)
    for group, indices in sorted(members.items()):
        by_class[group_label([labels[i] for i in indices])].append(group)

    total = sum(fractions)
    parts = [0] * len(groups)
    rng = random.Random(seed)
    for label in sorted(by_class):
        class_groups = by_class[label]
        rng.shuffle(class_groups)
        class_groups.sort(key=lambda group: -len(members[group]))  # stable: big groups first
        class_size = sum(len(members[group]) for group in class_groups)
        filled = [0] * len(fractions)
        for group in class_groups:
            deficits = [class_size * f / total - filled[p] for p, f in enumerate(fractions)]
            part = max(range(len(fractions)), key=lambda p: (deficits[p], -p))
            filled[part] += len(members[group])
            for index in members[group]:
                parts[index] = part
    return parts


def write_split_csv(path: Path, rows: Sequence[tuple[str, str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_CSV_COLUMNS)
        writer.writerows(rows)


def read_split_csv(path: Path) -> dict[str, tuple[str, str, int]]:
    """Map relative image path → (label, split, group); DataError says what is wrong with the file."""
    if not path.is_file():
        raise DataError(f"{path}: split CSV not found; pass an existing file or leave split_csv unset")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(SPLIT_CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: split CSV lacks columns {sorted(missing)}; expected {SPLIT_CSV_COLUMNS}")
        entries = {}
        for line, row in enumerate(reader, start=2):
            if row["split"] not in ALL_SPLITS:
                raise DataError(f"{path}:{line}: split {row['split']!r} is not one of {ALL_SPLITS}")
            entries[row["path"]] = (row["label"], row["split"], int(row["group"]))
    return entries


def fold_splits(groups: Sequence[int], labels: Sequence[int], folds: int, fold: int, seed: int) -> list[str]:
    """Split names for fold `fold` of `folds`-fold cross-validation: the images are cut into `folds`
    stratified, duplicate-aware parts; part `fold` is the held-out test fold, the next part (cyclically)
    validates (early stopping, checkpoint choice, temperature), the rest trains. Over all folds every
    image is tested exactly once and validates exactly once."""
    if folds < 3 or not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}: need at least 3 folds and 0 <= fold < folds")
    parts = assign_groups(groups, labels, [1.0] * folds, seed)
    role = {fold: "test", (fold + 1) % folds: "val"}
    return [role.get(part, "train") for part in parts]


def carve_calibration(
    splits: Sequence[str], groups: Sequence[int], labels: Sequence[int], fraction: float, seed: int
) -> list[str]:
    """`fraction` of the validation images (whole duplicate groups, stratified) moved to the calibration
    split: the rest still pick the epoch, these only fit the temperature and the prediction sets, so they
    are as new to the chosen model as the test images."""
    validation = [i for i, split in enumerate(splits) if split == "val"]
    parts = assign_groups(
        [groups[i] for i in validation], [labels[i] for i in validation], [1 - fraction, fraction], seed
    )
    carved = list(splits)
    for index, part in zip(validation, parts, strict=True):
        if part == 1:
            carved[index] = CALIBRATION
    return carved
