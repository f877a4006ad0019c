"""Lesion measurements on masks drawn by the tests: ellipses and rotated rectangles of known size in
millimetres, rasterised at a known (anisotropic) pixel spacing, measured within one pixel's size."""

import math

import numpy as np
import pytest

from busi.evaluation.measurements import components, lesions, measure

SHAPE = (240, 320)  # rows, columns


def pixel_centres_mm(spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (xs + 0.5) * spacing[0], (ys + 0.5) * spacing[1]


def rotated(x, y, centre, degrees):
    angle = math.radians(degrees)
    dx, dy = x - centre[0], y - centre[1]
    return dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)


def ellipse(semi_axes_mm, degrees, spacing, centre_mm=(20.0, 14.0)) -> np.ndarray:
    u, v = rotated(*pixel_centres_mm(spacing), centre_mm, degrees)
    return (u / semi_axes_mm[0]) ** 2 + (v / semi_axes_mm[1]) ** 2 <= 1


def rectangle(sides_mm, degrees, spacing, centre_mm=(20.0, 14.0)) -> np.ndarray:
    u, v = rotated(*pixel_centres_mm(spacing), centre_mm, degrees)
    return (np.abs(u) <= sides_mm[0] / 2) & (np.abs(v) <= sides_mm[1] / 2)


@pytest.mark.parametrize("degrees", [0, 30, 75])
@pytest.mark.parametrize("spacing", [(0.125, 0.125), (0.1, 0.15)])
def test_an_ellipse_is_measured_within_a_pixel(degrees, spacing):
    a, b = 9.0, 4.0  # semi-axes, mm
    lesion = measure(ellipse((a, b), degrees, spacing), spacing)
    pixel = max(spacing)
    angle = math.radians(degrees)
    assert lesion.long_axis_mm == pytest.approx(2 * a, abs=pixel)
    assert lesion.short_axis_mm == pytest.approx(2 * b, abs=pixel)
    assert lesion.width_mm == pytest.approx(2 * math.hypot(a * math.cos(angle), b * math.sin(angle)), abs=pixel)
    assert lesion.depth_mm == pytest.approx(2 * math.hypot(a * math.sin(angle), b * math.cos(angle)), abs=pixel)
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    assert lesion.area_mm2 == pytest.approx(math.pi * a * b, abs=perimeter * pixel / 2)
    assert lesion.long_axis_angle_deg == pytest.approx(min(degrees, 180 - degrees), abs=3)
    assert lesion.orientation == ("not parallel" if degrees == 75 else "parallel")
    assert lesion.long_axis_px == pytest.approx(
        2 * a * math.hypot(math.cos(angle) / spacing[0], math.sin(angle) / spacing[1]), abs=1.5
    )


@pytest.mark.parametrize("degrees", [0, 20, 60])
def test_a_rotated_rectangle_is_measured_within_a_pixel(degrees):
    spacing, (length, height) = (0.1, 0.12), (16.0, 6.0)
    lesion = measure(rectangle((length, height), degrees, spacing), spacing)
    diagonal = math.hypot(length, height)  # the longest diameter of a rectangle
    pixel = max(spacing)
    assert lesion.long_axis_mm == pytest.approx(diagonal, abs=pixel)
    # the longest chord perpendicular to the diagonal: through the centre, from one long side to the other
    assert lesion.short_axis_mm == pytest.approx(height * diagonal / length, abs=pixel)
    assert lesion.area_mm2 == pytest.approx(length * height, abs=(length + height) * 2 * pixel / 2)


def test_without_a_spacing_the_figures_are_in_pixels_only():
    mask = np.zeros(SHAPE, bool)
    mask[50:70, 100:160] = True  # 60 wide, 20 deep
    lesion = measure(mask)
    assert lesion.width_px == 60 and lesion.depth_px == 20 and lesion.area_px == 1200
    assert lesion.long_axis_px == pytest.approx(math.hypot(59, 19) + 59 / math.hypot(59, 19))
    assert lesion.long_axis_mm is None and lesion.area_mm2 is None
    assert lesion.depth_to_width == pytest.approx(1 / 3) and lesion.orientation == "parallel"


def test_every_lesion_above_the_minimum_area_largest_first():
    spacing = (0.1, 0.1)
    mask = ellipse((3.0, 2.0), 0, spacing, centre_mm=(8.0, 8.0)) | ellipse((6.0, 3.0), 0, spacing, (22.0, 14.0))
    mask[230, 310] = True  # a one-pixel speck: not a lesion
    found = lesions(mask, spacing)
    assert len(found) == 2 and found[0].area_px > found[1].area_px
    assert found[0].long_axis_mm == pytest.approx(12.0, abs=0.1) and found[1].long_axis_mm == pytest.approx(
        6.0, abs=0.1
    )
    assert lesions(np.zeros(SHAPE, bool)) == []


def test_components_are_8_connected_regions():
    mask = np.zeros((6, 8), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one region
    mask[4:6, 5:8] = True
    labels = components(mask)
    assert labels.max() == 2 and labels[0, 0] == labels[1, 1] == 1 and (labels[4:6, 5:8] == 2).all()
    assert (labels[~mask] == 0).all()
