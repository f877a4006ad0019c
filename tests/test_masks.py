"""Lesion masks in the data path: the union of an image's mask files, squashed like the image, packed
1 bit per pixel, cached, empty for normal images, unknown (left out of the loss) when missing, and
moved together with the image by augmentation."""

import numpy as np
import torch
from PIL import Image

from busi.data.augment import augment_batch
from busi.data.catalog import read_catalog
from busi.io.images import MASK_UNKNOWN

SIZE = 64


def disc(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def write_class_folders(root, scans: dict[str, list[tuple[str, np.ndarray, list[np.ndarray]]]]):
    """scans: class → [(name, uint8 image, [bool masks → name_mask.png, name_mask_1.png, …])]."""
    for name in ("benign", "malignant", "normal"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for stem, pixels, masks in scans.get(name, []):
            Image.fromarray(pixels).save(root / name / f"{stem}.png")
            for index, mask in enumerate(masks):
                suffix = "_mask" if index == 0 else f"_mask_{index}"
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / name / f"{stem}{suffix}.png")
    return root


def bright_disc_scan(height=150, width=110, cy=60.0, cx=45.0, radius=22.0):
    lesion = disc(height, width, cy, cx, radius)
    return np.where(lesion, 255, 0).astype(np.uint8), lesion


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_target_is_the_union_of_the_mask_files_squashed_like_the_image(tmp_path):
    height, width = 150, 110
    left, right = disc(height, width, 70, 30, 15), disc(height, width, 70, 80, 15)
    scan = np.where(left | right, 230, 20).astype(np.uint8)
    root = write_class_folders(
        tmp_path,
        {
            "benign": [("two lesions", scan, [left, right])],
            "malignant": [("one lesion", scan, [left])],
            "normal": [("normal", np.full((height, width), 90, np.uint8), [])],
        },
    )
    catalog = read_catalog(root, SIZE, -1)
    by_name = {record.path.stem: index for index, record in enumerate(catalog.records)}
    both = catalog.mask(by_name["two lesions"])[0].bool()
    one = catalog.mask(by_name["one lesion"])[0].bool()
    bright = catalog.image(by_name["two lesions"])[0] > 125  # the squashed image's lesion pixels
    assert both.shape == (SIZE, SIZE) and iou(both, bright) > 0.95
    assert (one & ~both).sum() == 0 and 0.4 < one.sum() / both.sum() < 0.6  # one of the two discs
    assert catalog.mask(by_name["normal"]).sum() == 0  # normal: an empty target, without a mask file
    assert len(catalog.masks[by_name["two lesions"]]) == SIZE * SIZE // 8  # 1 bit per pixel


def test_lesion_images_without_a_mask_are_unknown_never_empty(tmp_path):
    scan, lesion = bright_disc_scan()
    root = write_class_folders(
        tmp_path,
        {
            "benign": [("with", scan, [lesion]), ("without", scan, [])],
            "malignant": [("broken", scan, [lesion])],
            "normal": [("n", scan, [])],
        },
    )
    (root / "malignant" / "broken_mask.png").write_bytes(b"not a png")
    catalog = read_catalog(root, SIZE, -1)
    by_name = {record.path.stem: index for index, record in enumerate(catalog.records)}
    assert catalog.masks[by_name["without"]] is None
    assert torch.all(catalog.mask(by_name["without"]) == MASK_UNKNOWN)
    assert torch.all(catalog.mask(by_name["broken"]) == MASK_UNKNOWN)  # kept as an image, mask unknown
    assert [item["path"] for item in catalog.audit["unreadable_masks"]] == ["malignant/broken_mask.png"]
    assert catalog.audit["per_class"]["benign"]["target_masks"] == 1


def test_masks_come_back_from_the_cache_unchanged(tmp_path):
    scan, lesion = bright_disc_scan()
    root = write_class_folders(
        tmp_path / "data",
        {
            "benign": [("a", scan, [lesion])],
            "malignant": [("b", scan[::-1].copy(), [lesion[::-1].copy()])],
            "normal": [("n", scan, [])],
        },
    )
    first = read_catalog(root, SIZE, -1, cache_dir=tmp_path / "cache")
    second = read_catalog(root, SIZE, -1, cache_dir=tmp_path / "cache")
    assert (first.cache.mask_misses, second.cache.mask_misses, second.cache.mask_hits) == (2, 0, 2)
    assert second.masks == first.masks and first.masks[0] != first.masks[1]


def test_augmentation_moves_the_mask_with_the_image(tmp_path):
    scan, lesion = bright_disc_scan()
    root = write_class_folders(
        tmp_path, {"benign": [("a", scan, [lesion])], "malignant": [("b", scan, [lesion])], "normal": [("n", scan, [])]}
    )
    catalog = read_catalog(root, SIZE, -1)
    images = catalog.image(0)[None].expand(16, 3, -1, -1)
    masks = catalog.mask(0)[None].expand(16, -1, -1, -1)
    unknown = torch.full((1, 1, SIZE, SIZE), MASK_UNKNOWN, dtype=torch.uint8)
    torch.manual_seed(0)
    moved_images, moved_masks = augment_batch(images, torch.cat([masks[:-1], unknown]))
    assert moved_masks.dtype == torch.uint8 and set(moved_masks[:-1].unique().tolist()) <= {0, 1}
    for image, mask in zip(moved_images[:-1], moved_masks[:-1], strict=True):
        assert iou(image.mean(dim=0) > 0.3, mask[0].bool()) > 0.85  # the disc and its mask still coincide
    unmoved = masks[0, 0].bool()
    assert min(iou(mask[0].bool(), unmoved) for mask in moved_masks[:-1]) < 0.8  # and they did move
    assert set(moved_masks[-1].unique().tolist()) <= {0, MASK_UNKNOWN}  # unknown stays unknown
    torch.manual_seed(0)
    assert torch.equal(augment_batch(images), moved_images)  # the same draws with or without masks
