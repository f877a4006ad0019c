"""The region around a lesion, cut from the original scan at its own resolution (not from the squashed
model input), and the lesion's shape figures; the lesion-crop stage (benchmarks/lesion_crops.py)
classifies such crops and combines their answer with the whole-image model's."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from busi.evaluation.measurements import components, hull, measure, row_ends

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in the original image's pixels, right/bottom exclusive


def lesion_box(mask: np.ndarray, original_size: tuple[int, int], margin: float = 0.25) -> Box | None:
    """The square around a mask's lesion pixels (a bool (h, w) mask at any resolution, scaled to the
    `original_size` (width, height) image), widened by `margin` of its side on every side and kept inside
    the image (shifted, then cut where the image is smaller); None when the mask is empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    width, height = original_size
    sx, sy = width / mask.shape[1], height / mask.shape[0]
    left, right = columns[0] * sx, (columns[-1] + 1) * sx
    top, bottom = rows[0] * sy, (rows[-1] + 1) * sy
    side = min(max(right - left, bottom - top) * (1 + 2 * margin), max(width, height))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    box_left = round(float(min(max(centre_x - side / 2, 0), max(width - side, 0))))
    box_top = round(float(min(max(centre_y - side / 2, 0), max(height - side, 0))))
    side_px = round(float(side))
    return box_left, box_top, min(box_left + side_px, width), min(box_top + side_px, height)


def crop_region(image: Image.Image, box: Box, size: int) -> Image.Image:
    """The box of `image` resized to size × size (bicubic, as busi resizes scans)."""
    return image.crop(box).resize((size, size), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Shape:
    """What a predicted mask says of the lesion's shape, as the combiner's inputs; all 0 without one.

    area: its largest lesion's share of the image. elongation: short axis / long axis (1: round).
    depth_to_width: depth / width (above 1: taller than wide, suspicious in BI-RADS). solidity: area over
    the area of its convex hull (below 1: lobulated, angular or spiculated margins)."""

    has_lesion: float = 0.0
    area: float = 0.0
    elongation: float = 0.0
    depth_to_width: float = 0.0
    solidity: float = 0.0

    def as_list(self) -> list[float]:
        return list(asdict(self).values())


SHAPE_FEATURES = tuple(Shape.__dataclass_fields__)


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def lesion_shape(mask: np.ndarray) -> Shape:
    """The shape figures of a bool mask's largest connected region (busi.evaluation.measurements)."""
    labels = components(mask)
    if labels.max() == 0:
        return Shape()
    region = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    lesion = measure(region)
    # the hull of the pixels' corners (row_ends gives centres), so that a filled rectangle has solidity 1
    centres = row_ends(region)
    corners = np.concatenate([centres + offset for offset in ([-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5])])
    hull_area = polygon_area(hull(corners))
    return Shape(
        has_lesion=1.0,
        area=float(lesion.area_px / mask.size),
        elongation=float(lesion.short_axis_px / lesion.long_axis_px),
        depth_to_width=float(lesion.depth_to_width),
        solidity=float(min(1.0, lesion.area_px / hull_area)),
    )
