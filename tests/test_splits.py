from collections import Counter, defaultdict

import numpy as np
import pytest

from busi.data.splits import assign_groups, carve_calibration, fold_splits


def test_split_is_stratified_and_keeps_groups_whole():
    rng = np.random.default_rng(0)
    labels = [0] * 300 + [1] * 150 + [2] * 90
    groups = list(range(len(labels)))
    for start in range(0, 120, 3):  # forty groups of three near-duplicates
        groups[start + 1] = groups[start + 2] = groups[start]
    rng.shuffle(groups[300:])
    parts = assign_groups(groups, labels, (0.7, 0.15, 0.15), seed=3)
    members = defaultdict(set)
    for group, part in zip(groups, parts, strict=True):
        members[group].add(part)
    assert all(len(p) == 1 for p in members.values())
    for label, size in ((0, 300), (1, 150), (2, 90)):
        counts = np.bincount([p for p, lab in zip(parts, labels, strict=True) if lab == label], minlength=3)
        assert np.allclose(counts / size, (0.7, 0.15, 0.15), atol=0.02), counts


def test_split_is_reproducible_and_depends_on_seed():
    labels = [i % 3 for i in range(200)]
    groups = list(range(200))
    first = assign_groups(groups, labels, (0.7, 0.15, 0.15), seed=1)
    assert first == assign_groups(groups, labels, (0.7, 0.15, 0.15), seed=1)
    assert first != assign_groups(groups, labels, (0.7, 0.15, 0.15), seed=2)


def test_folds_are_stratified_keep_groups_whole_and_test_and_validate_each_image_once():
    labels = [0] * 60 + [1] * 30 + [2] * 20
    groups = [i // 3 if i < 30 else i for i in range(len(labels))]  # 10 triplets of near-duplicates
    folds = 5
    roles = [fold_splits(groups, labels, folds, k, seed=1) for k in range(folds)]
    for image in range(len(labels)):
        column = [roles[k][image] for k in range(folds)]
        assert column.count("test") == 1 and column.count("val") == 1
    for k in range(folds):
        by_group = defaultdict(set)
        for image, role in enumerate(roles[k]):
            by_group[groups[image]].add(role)
        assert all(len(r) == 1 for r in by_group.values())
        tested = Counter(labels[i] for i, role in enumerate(roles[k]) if role == "test")
        assert abs(tested[0] - 12) <= 3 and tested[1] == 6 and tested[2] == 4  # a fifth of each class
    with pytest.raises(ValueError, match="at least 3 folds"):
        fold_splits(groups, labels, 2, 0, seed=1)


def test_a_calibration_share_comes_out_of_the_validation_fold_only_whole_groups_and_stratified():
    labels = [0] * 60 + [1] * 30 + [2] * 20
    groups = [i // 3 if i < 30 else i for i in range(len(labels))]
    roles = fold_splits(groups, labels, 5, 0, seed=1)
    carved = carve_calibration(roles, groups, labels, 0.5, seed=1)
    assert all(c == r for c, r in zip(carved, roles, strict=True) if r != "val")  # train and test untouched
    moved = [i for i, (c, r) in enumerate(zip(carved, roles, strict=True)) if c != r]
    assert all(carved[i] == "calibration" and roles[i] == "val" for i in moved)
    by_group = defaultdict(set)
    for image, role in enumerate(carved):
        by_group[groups[image]].add(role)
    assert all(len(r) == 1 for r in by_group.values())
    for label in range(3):
        validating = sum(1 for i, r in enumerate(roles) if r == "val" and labels[i] == label)
        calibrating = sum(1 for i in moved if labels[i] == label)
        assert abs(calibrating - validating / 2) <= 3  # about half of each class
