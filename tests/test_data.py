from collections import Counter
from pathlib import Path

import pytest
import torch

from busi import CLASS_NAMES
from busi.data.catalog import read_catalog, scan_class_folders
from busi.data.dataset import ClassBalancedSampler, ClassRepeatSampler
from busi.data.module import BusiDataModule
from busi.data.splits import read_split_csv, write_split_csv
from busi.errors import DataError

from fake_busi import IMAGE_SIZE, write_busi_folder


def datamodule(root: Path, **overrides) -> BusiDataModule:
    module = BusiDataModule(root=str(root), image_size=IMAGE_SIZE, **overrides)
    module.setup("fit")
    return module


def test_masks_are_never_images_and_stay_attached(busi_root):
    records, orphans, _, _ = scan_class_folders(busi_root)
    assert records and not orphans
    assert all("_mask" not in r.path.name for r in records)
    by_name = {r.path.name: r for r in records}
    assert [m.name for m in by_name["benign (4).png"].masks] == ["benign (4)_mask.png", "benign (4)_mask_1.png"]
    assert [m.name for m in by_name["normal (3).png"].masks] == ["normal (3)_mask.png"]


def test_audit_names_unreadable_conflicting_and_duplicate_files(busi_root):
    audit = read_catalog(busi_root, IMAGE_SIZE, duplicate_distance=10).audit
    on_disk = [p for p in busi_root.rglob("*.png") if "_mask" not in p.name]
    assert audit["images"] == len(on_disk) - 1
    assert [u["path"] for u in audit["unreadable"]] == ["normal/normal (11).png"]
    assert "truncated" in audit["unreadable"][0]["reason"]
    conflict = audit["conflicting_labels"]
    assert len(conflict) == 1 and conflict[0]["identical_pixels"]
    assert sorted(conflict[0]["labels"]) == ["benign", "malignant"]
    grouped = [sorted(g) for g in audit["duplicate_groups"]]
    assert ["benign/benign (1).png", "benign/benign (11).png"] in grouped
    assert audit["masks_per_image"]["2"] == sum(1 for p in busi_root.rglob("*_mask_1.png"))
    assert audit["modes"] == {"L": audit["modes"]["L"], "RGB": audit["modes"]["RGB"]}


def test_datamodule_splits_every_class_and_keeps_duplicates_together(busi_root):
    module = datamodule(busi_root)
    rows = module.split_rows()
    split_by_path = {path: split for path, _, split, _ in rows}
    assert split_by_path["benign/benign (1).png"] == split_by_path["benign/benign (11).png"]
    assert split_by_path["benign/benign (12).png"] == split_by_path["malignant/malignant (2).png"]
    for split, per_class in module.split_counts().items():
        assert all(per_class[name] > 0 for name in CLASS_NAMES), (split, per_class)
    pixels, label, key, mask = module.train_dataloader().dataset[0]
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == torch.uint8
    assert mask.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and mask.dtype == torch.uint8
    assert label == module.catalog.records[module.catalog.digests.index(key)].label


def test_split_csv_round_trip_reuses_the_split(busi_root, tmp_path):
    first = datamodule(busi_root, seed=5)
    csv_path = tmp_path / "split.csv"
    write_split_csv(csv_path, first.split_rows())
    reused = datamodule(busi_root, seed=999, split_csv=str(csv_path))
    assert reused.split_rows() == first.split_rows()
    assert set(read_split_csv(csv_path)) == {row[0] for row in first.split_rows()}


def test_split_csv_with_a_relabelled_file_is_refused(busi_root, tmp_path):
    rows = datamodule(busi_root).split_rows()
    path, label, split, group = rows[0]
    rows[0] = (path, "normal" if label != "normal" else "benign", split, group)
    csv_path = tmp_path / "split.csv"
    write_split_csv(csv_path, rows)
    with pytest.raises(DataError, match="labelled"):
        datamodule(busi_root, split_csv=str(csv_path))


def test_missing_class_folder_is_refused_up_front(tmp_path):
    root = write_busi_folder(tmp_path / "busi", per_class=3)
    for path in (root / "normal").iterdir():
        path.unlink()
    (root / "normal").rmdir()
    with pytest.raises(DataError, match=r"\['normal'\] are missing"):
        datamodule(root)


def test_balanced_sampling_draws_each_class_equally_the_same_way_every_time_and_shards_exactly():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    dataset = list(range(len(labels)))

    def epoch(seed, number, replicas=1, rank=0):
        sampler = ClassBalancedSampler(dataset, labels, num_replicas=replicas, rank=rank, seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    assert len(epoch(7, 0)) == len(labels) and epoch(7, 0) == epoch(7, 0)
    assert epoch(7, 0) != epoch(7, 1) and epoch(7, 0) != epoch(8, 0)
    drawn = Counter(labels[i] for number in range(50) for i in epoch(7, number))
    shares = [drawn[c] / sum(drawn.values()) for c in range(3)]
    assert all(abs(share - 1 / 3) < 0.02 for share in shares)  # 60:30:10 in the data
    whole = epoch(7, 3)
    shards = [epoch(7, 3, replicas=2, rank=r) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert [i for pair in zip(*shards, strict=True) for i in pair] == whole


def test_oversampling_repeats_each_class_by_its_inverse_share_the_same_way_every_time_and_shards_exactly():
    labels = [0] * 56 + [1] * 27 + [2] * 17  # BUSI-like shares: ×2, ×4, ×6
    dataset = list(range(len(labels)))

    def epoch(seed, number, replicas=1, rank=0):
        sampler = ClassRepeatSampler(dataset, labels, num_replicas=replicas, rank=rank, seed=seed)
        sampler.set_epoch(number)
        assert len(sampler) == len(list(sampler))
        return list(sampler)

    drawn = epoch(7, 0)
    assert Counter(drawn) == Counter({i: (2, 4, 6)[label] for i, label in enumerate(labels)})  # each image
    assert len(drawn) == 56 * 2 + 27 * 4 + 17 * 6
    assert drawn == epoch(7, 0) and drawn != epoch(7, 1) and drawn != epoch(8, 0)  # a function of (seed, epoch)
    shards = [epoch(7, 0, replicas=2, rank=r) for r in (0, 1)]
    assert [i for pair in zip(*shards, strict=True) for i in pair] == drawn
    three = [epoch(7, 0, replicas=3, rank=r) for r in (0, 1, 2)]  # 322 draws: padded to 324, as DistributedSampler
    interleaved = [i for triple in zip(*three, strict=True) for i in triple]
    assert interleaved[: len(drawn)] == drawn and interleaved[len(drawn) :] == drawn[:2]
