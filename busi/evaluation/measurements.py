"""Lesion measurements from a predicted mask, as breast ultrasound reports give them: the long axis
(maximum diameter), the short axis (the longest chord perpendicular to it), the area, depth and width (along the image's
columns and rows), the depth-to-width ratio and the BI-RADS orientation (parallel to the skin line, the
image's rows, or not: "taller than wide"). In pixels always; in millimetres where the scan gives a pixel
spacing. A length along a direction is the extent of the pixel centres plus one pixel's step along it
(the larger of its x and y parts): a lesion one pixel wide is one pixel long, and ellipses and rectangles
drawn at any angle measure within a pixel of their size (tests/test_measurements.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_AREA_FRACTION = 0.001  # of the image: smaller specks of a predicted mask are not lesions


@dataclass(frozen=True)
class Lesion:
    """One lesion of a mask. `*_px` in source pixels; `*_mm` (None without a spacing) in millimetres."""

    area_px: int
    long_axis_px: float
    short_axis_px: float
    depth_px: float  # extent along the columns (anteroposterior: away from the probe)
    width_px: float  # extent along the rows (parallel to the skin line)
    long_axis_angle_deg: float  # of the long axis against the rows, in [0, 90]
    centre_px: tuple[float, float]  # (x, y) of the pixels' centroid
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    depth_mm: float | None = None
    width_mm: float | None = None
    area_mm2: float | None = None

    @property
    def depth_to_width(self) -> float:
        """Depth over width, in millimetres where known (pixels need not be square); above 1: taller than wide."""
        if self.depth_mm is not None and self.width_mm:
            return self.depth_mm / self.width_mm
        return self.depth_px / self.width_px

    @property
    def orientation(self) -> str:
        """BI-RADS: `parallel` (wider than tall) or `not parallel` (taller than wide)."""
        return "not parallel" if self.depth_to_width > 1 else "parallel"

    def summary(self) -> str:
        """One line, as a report gives it: in mm where known, else in pixels."""
        if self.long_axis_mm is not None:
            size = f"{self.long_axis_mm:.1f} × {self.short_axis_mm:.1f} mm, area {self.area_mm2:.1f} mm²"
        else:
            size = f"{self.long_axis_px:.0f} × {self.short_axis_px:.0f} px, area {self.area_px} px (no pixel spacing)"
        return f"{size}, depth/width {self.depth_to_width:.2f} ({self.orientation})"

    def as_dict(self) -> dict:
        return {**asdict(self), "depth_to_width": self.depth_to_width, "orientation": self.orientation}


def components(mask: np.ndarray) -> np.ndarray:
    """Labels (0 background, 1…N) of the 8-connected regions of a boolean mask, numbered in the order of
    their first pixel (row by row): the runs of each row, joined to the runs they touch in the next."""
    padded = np.pad(np.asarray(mask, dtype=np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(edges == 1)
    _, run_ends = np.nonzero(edges == -1)  # exclusive; the same order as the starts
    parent = list(range(len(run_rows)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_of_row = np.searchsorted(run_rows, np.arange(mask.shape[0] + 1))
    for row in range(mask.shape[0] - 1):
        a, a_end = first_of_row[row], first_of_row[row + 1]
        b, b_end = first_of_row[row + 1], first_of_row[row + 2]
        while a < a_end and b < b_end:
            if run_starts[a] <= run_ends[b] and run_starts[b] <= run_ends[a]:  # touching, diagonals too
                ra, rb = root(a), root(b)
                parent[max(ra, rb)] = min(ra, rb)
            if run_ends[a] < run_ends[b]:
                a += 1
            else:
                b += 1
    roots = [root(k) for k in range(len(parent))]
    numbers = {r: n for n, r in enumerate(dict.fromkeys(roots), start=1)}
    labels = np.zeros(mask.shape, dtype=np.int64)
    for k, r in enumerate(roots):
        labels[run_rows[k], run_starts[k] : run_ends[k]] = numbers[r]
    return labels


def row_ends(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the centres of each row's first and last pixel of a region: all its convex hull needs."""
    rows = np.flatnonzero(mask.any(axis=1))
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    return np.concatenate([np.stack([first, rows], axis=1), np.stack([last, rows], axis=1)]) + 0.5


def cross(a: np.ndarray, b: np.ndarray) -> float:
    return a[0] * b[1] - a[1] * b[0]


def hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain) of 2-D points, counter-clockwise."""
    ordered = np.unique(points, axis=0).astype(float)  # sorted by x, then y
    if len(ordered) <= 2:
        return ordered

    def half(chain_points):
        chain: list[np.ndarray] = []
        for point in chain_points:
            while len(chain) >= 2 and cross(chain[-1] - chain[-2], point - chain[-2]) <= 0:
                chain.pop()
            chain.append(point)
        return chain[:-1]

    return np.array(half(ordered) + half(ordered[::-1]))


def measure(region: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> Lesion:
    """The measurements of one region (a boolean mask); `spacing_mm`: (x, y) size of a pixel."""
    sx, sy = spacing_mm or (1.0, 1.0)
    outline = hull(row_ends(region)) * np.array([sx, sy])
    pairs = outline[:, None, :] - outline[None, :, :]
    distances = np.hypot(pairs[..., 0], pairs[..., 1])
    i, j = np.unravel_index(np.argmax(distances), distances.shape)
    axis = (outline[j] - outline[i]) / distances[i, j] if distances[i, j] > 0 else np.array([1.0, 0.0])
    normal = np.array([-axis[1], axis[0]])
    step = lambda u: max(abs(u[0]) * sx, abs(u[1]) * sy)  # noqa: E731  (one pixel along direction u)
    long_axis = float(distances[i, j]) + step(axis)
    ys, xs = np.nonzero(region)
    points = (np.stack([xs, ys], axis=1) + 0.5) * np.array([sx, sy])
    # the short axis is the longest chord perpendicular to the long axis: the region cut into strips one
    # pixel wide across the long axis, the longest strip's extent
    strips = np.floor((points @ axis) / step(axis)).astype(np.int64)
    across = points @ normal
    strips -= strips.min()
    low = np.full(strips.max() + 1, np.inf)
    high = np.full(strips.max() + 1, -np.inf)
    np.minimum.at(low, strips, across)
    np.maximum.at(high, strips, across)
    short_axis = float((high - low).max()) + step(normal)
    width = float(np.ptp(outline[:, 0])) + sx
    depth = float(np.ptp(outline[:, 1])) + sy
    physical = spacing_mm is not None
    in_pixels = lambda u: math.hypot(u[0] / sx, u[1] / sy)  # noqa: E731  (pixels per mm along direction u)
    return Lesion(
        area_px=int(region.sum()),
        long_axis_px=long_axis * in_pixels(axis) if physical else long_axis,
        short_axis_px=short_axis * in_pixels(normal) if physical else short_axis,
        depth_px=depth / sy,
        width_px=width / sx,
        long_axis_angle_deg=math.degrees(math.atan2(abs(axis[1]), abs(axis[0]))),
        centre_px=(float(xs.mean()), float(ys.mean())),
        long_axis_mm=long_axis if physical else None,
        short_axis_mm=short_axis if physical else None,
        depth_mm=depth if physical else None,
        width_mm=width if physical else None,
        area_mm2=float(region.sum() * sx * sy) if physical else None,
    )


def lesions(mask: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> list[Lesion]:
    """Every lesion of a predicted mask, largest first: the largest always, the others when they cover
    at least MIN_AREA_FRACTION of the image."""
    labels = components(mask)
    if labels.max() == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(-areas, kind="stable")
    keep = [k for rank, k in enumerate(order) if rank == 0 or areas[k] >= MIN_AREA_FRACTION * mask.size]
    return [measure(labels == k + 1, spacing_mm) for k in keep]
