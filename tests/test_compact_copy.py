"""benchmarks/compact_copy.py: the squashed copy that travels to a GPU machine trains on the original's pixels,
masks and folds."""

import torch

from benchmarks.compact_copy import compact_copy, write_fold_splits
from busi.data.module import BusiDataModule


def loaded(root, **options) -> BusiDataModule:
    datamodule = BusiDataModule(root=str(root), image_size=48, folds=3, seed=7, **options)
    datamodule.setup("fit")
    return datamodule


def test_the_copy_with_its_split_csvs_gives_the_originals_images_masks_and_folds(busi_root, tmp_path):
    copied = compact_copy(busi_root, tmp_path / "copy", 48)
    write_fold_splits(busi_root, tmp_path / "splits", seeds=[7], folds=3)
    for fold in range(3):
        original = loaded(busi_root, fold=fold)
        copy = loaded(tmp_path / "copy", fold=fold, split_csv=str(tmp_path / "splits" / f"seed7_fold{fold}.csv"))
        assert copy.split_rows() == original.split_rows()
        assert len(original.split_rows()) == copied  # the unreadable file is left out of both
        for index in range(copied):
            assert torch.equal(copy.catalog.image(index), original.catalog.image(index))
            assert torch.equal(copy.catalog.mask(index), original.catalog.mask(index))
    assert any(original.catalog.mask(i).sum() > 0 for i in range(copied))  # masks were compared, not only blanks
