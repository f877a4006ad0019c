"""The lesion-crop stage's boxes and shape figures, on masks drawn here."""

import numpy as np
import pytest
from PIL import Image

from busi.evaluation.crops import crop_region, lesion_box, lesion_shape


def test_the_box_is_the_lesions_square_widened_by_the_margin_in_original_pixels():
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:30, 24:40] = True  # 16 wide, 10 tall at 64 px
    box = lesion_box(mask, (640, 480), margin=0.25)  # the original is 640 × 480: 10 × 7.5 per mask pixel
    left, top, right, bottom = box
    assert right - left == bottom - top == 240  # the longer side, 160 px, × 1.5
    assert (left + right) / 2 == pytest.approx(320) and (top + bottom) / 2 == pytest.approx(187.5, abs=1)


def test_a_box_near_the_edge_is_shifted_inside_and_an_empty_mask_has_none():
    mask = np.zeros((64, 64), dtype=bool)
    mask[0:8, 56:64] = True  # the top right corner
    left, top, right, bottom = lesion_box(mask, (500, 400), margin=0.5)
    assert left >= 0 and right == 500 and top == 0 and bottom <= 400
    assert right - left == bottom - top
    assert lesion_box(np.zeros((64, 64), dtype=bool), (500, 400)) is None
    everything = lesion_box(np.ones((64, 64), dtype=bool), (500, 400), margin=0.5)
    assert everything == (0, 0, 500, 400)  # never larger than the image


def test_the_crop_is_cut_from_the_original_and_resized():
    pixels = np.zeros((400, 600), dtype=np.uint8)
    pixels[100:200, 300:400] = 255
    crop = crop_region(Image.fromarray(pixels), (300, 100, 400, 200), 32)
    assert crop.size == (32, 32) and np.asarray(crop).min() == 255


def test_shape_figures_of_drawn_lesions():
    assert lesion_shape(np.zeros((64, 64), dtype=bool)).has_lesion == 0
    rectangle = np.zeros((64, 64), dtype=bool)
    rectangle[10:20, 5:45] = True
    shape = lesion_shape(rectangle)
    assert shape.has_lesion == 1 and shape.area == pytest.approx(400 / 64**2)
    assert shape.depth_to_width == pytest.approx(0.25) and shape.solidity == pytest.approx(1.0)
    assert shape.elongation == pytest.approx(10 / 40, abs=0.02)
    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 < 40**2
    assert lesion_shape(disc).elongation == pytest.approx(1, abs=0.03)
    assert lesion_shape(disc).solidity == pytest.approx(1, abs=0.03)
    spiky = disc & ((np.arctan2(yy - 64, xx - 64) * 6 / np.pi).astype(int) % 2 == 0)  # every other sector
    assert lesion_shape(spiky).solidity < 0.75
    tall = np.zeros((64, 64), dtype=bool)
    tall[5:45, 20:30] = True
    assert lesion_shape(tall).depth_to_width == pytest.approx(4)
    two = rectangle.copy()
    two[40:44, 40:44] = True  # a speck: the largest region is measured
    assert lesion_shape(two).area == pytest.approx(400 / 64**2)
