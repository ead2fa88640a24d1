"""Lesion measurements: golden values on drawn shapes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dermaseg.errors import DermasegError
from dermaseg.infer.measure import (
    COLOR_MIN_FRACTION,
    ISIC_COLORS,
    colour_calls,
    contour_polygon,
    measure_lesion,
    srgb_to_lab,
)

YY, XX = np.mgrid[:121, :141]


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    return (XX - cx) ** 2 + (YY - cy) ** 2 <= r * r


def ellipse(cx: float, cy: float, a: float, b: float, angle: float) -> np.ndarray:
    x, y = XX - cx, YY - cy
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


@pytest.mark.parametrize("r", [6, 15, 40])
def test_disc(r):
    res = measure_lesion(disc(70.3, 60.2, r))
    assert res["area"] == pytest.approx(math.pi * r * r, rel=0.03)
    assert res["perimeter"] == pytest.approx(2 * math.pi * r, rel=0.02)
    assert res["max_diameter"] == pytest.approx(2 * r + 1, abs=0.5)  # pixels are unit squares
    assert res["compactness"] == pytest.approx(1.0, abs=0.05)
    assert res["border_irregularity"] == pytest.approx(1 / res["compactness"])
    assert res["solidity"] > 1 - 1 / r  # the pixel staircase leaves gaps under the hull
    # digitisation of an off-grid disc alone gives up to ~0.5 / r
    assert res["asymmetry_major"] < 0.5 / r and res["asymmetry_minor"] < 0.5 / r
    assert res["centroid"] == pytest.approx([70.3, 60.2], abs=0.3)
    assert res["empty"] is False


def test_ellipse():
    a, b, angle = 50.0, 20.0, 0.6
    res = measure_lesion(ellipse(70.4, 60.3, a, b, angle))
    h = ((a - b) / (a + b)) ** 2
    ramanujan = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    assert res["area"] == pytest.approx(math.pi * a * b, rel=0.01)
    assert res["max_diameter"] == pytest.approx(2 * a, rel=0.02)
    assert res["perimeter"] == pytest.approx(ramanujan, rel=0.02)
    assert res["compactness"] == pytest.approx(4 * math.pi**2 * a * b / ramanujan**2, rel=0.04)
    assert res["asymmetry"] < 0.03


def test_asymmetric_shape_and_axis_aligned_box():
    box = np.zeros((121, 141), bool)
    box[20:50, 30:110] = True  # 80 wide, 30 high
    res = measure_lesion(box)
    assert res["area"] == 2400
    assert res["bbox"] == {"x": 30, "y": 20, "width": 80, "height": 30}
    assert res["max_diameter"] == pytest.approx(math.hypot(80, 30), abs=0.01)
    assert res["asymmetry"] == pytest.approx(0, abs=1e-9)
    # an L shape: a box plus a foot at one end is asymmetric about its long axis
    shape = box.copy()
    shape[50:80, 30:60] = True
    assert measure_lesion(shape)["asymmetry"] > 0.15


def test_pixel_size_and_json():
    res = measure_lesion(disc(70, 60, 20), pixel_size_mm=0.05)
    assert res["area_mm2"] == pytest.approx(res["area"] * 0.0025)
    assert res["max_diameter_mm"] == pytest.approx(res["max_diameter"] * 0.05)
    assert res["perimeter_mm"] == pytest.approx(res["perimeter"] * 0.05)
    assert json.loads(json.dumps(res)) == res
    with pytest.raises(DermasegError, match="pixel_size_mm"):
        measure_lesion(disc(70, 60, 20), pixel_size_mm=0)


def test_colour_variegation():
    """Colours as they look in dermoscopy images (sRGB): each region gets its name."""
    lesion = disc(70, 60, 30)
    image = np.full((121, 141, 3), 230, np.uint8)  # white skin everywhere
    left = lesion & (XX < 70)
    image[left] = [180, 125, 90]  # light brown
    image[lesion & ~left & (YY < 60)] = [100, 65, 50]  # dark brown
    image[lesion & ~left & (YY >= 60)] = [120, 125, 140]  # blue-grey
    res = measure_lesion(lesion, image)
    assert sorted(res["colors"]) == ["blue_gray", "dark_brown", "light_brown"]
    assert res["color_count"] == 3
    assert sum(res["color_fractions"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(res["color_fractions"]) == set(ISIC_COLORS)
    assert res["color_fractions"]["light_brown"] == pytest.approx(0.5, abs=0.05)
    uniform = measure_lesion(lesion, np.full((121, 141, 3), [180, 125, 90], np.uint8))
    assert uniform["color_count"] == 1 and uniform["color_spread"] == pytest.approx(0)
    assert res["color_spread"] > 0.1
    with pytest.raises(DermasegError, match="image"):
        measure_lesion(lesion, image[:10])


@pytest.mark.parametrize(("rgb", "name"), [
    ((173, 108, 77), "light_brown"),  # a PH2 nevus's median colour: the old rule said red
    ((140, 83, 70), "dark_brown"),
    ((95, 60, 45), "dark_brown"),
    ((30, 25, 25), "black"),
    ((200, 80, 85), "red"),
    ((130, 130, 140), "blue_gray"),
    ((235, 228, 225), "white"),
])
def test_each_dermoscopy_colour_gets_its_name(rgb, name):
    calls = colour_calls(np.array([rgb], np.uint8))
    assert list(ISIC_COLORS)[calls[0]] == name


def test_far_colours_are_unassigned_and_small_shares_not_present():
    """A pixel far from every reference (ink, a green cast) is no colour: the shares add up
    to less than 1; a colour under COLOR_MIN_FRACTION of the lesion is not called present."""
    lesion = disc(70, 60, 30)
    image = np.full((121, 141, 3), [180, 125, 90], np.uint8)  # light brown
    image[lesion & (XX < 55)] = [40, 200, 60]  # green: no dermoscopy colour
    image[lesion & (XX > 97)] = [30, 25, 25]  # a black sliver, under 5 % of the lesion
    res = measure_lesion(lesion, image)
    green = (lesion & (XX < 55)).sum() / lesion.sum()
    sliver = res["color_fractions"]["black"]
    assert 0 < sliver < COLOR_MIN_FRACTION and res["colors"] == ["light_brown"]
    assert sum(res["color_fractions"].values()) == pytest.approx(1 - green, abs=0.01)
    assert colour_calls(np.array([[40, 200, 60], [20, 40, 220]], np.uint8)).tolist() == [-1, -1]
    all_green = measure_lesion(lesion, np.full((121, 141, 3), [40, 200, 60], np.uint8))
    assert all_green["colors"] == [] and all_green["color_count"] == 0


def test_srgb_to_cielab_matches_the_standard():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]],
                               np.uint8))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.01)
    assert lab[1] == pytest.approx([0, 0, 0], abs=0.01)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.02)
    assert lab[3] == pytest.approx([53.59, 0, 0], abs=0.01)


def test_empty_mask():
    res = measure_lesion(np.zeros((10, 12), np.uint8), np.zeros((10, 12, 3), np.uint8), 0.1)
    assert res["empty"] is True and res["area"] == 0 and res["area_mm2"] == 0
    assert res["max_diameter"] is None and res["max_diameter_mm"] is None
    assert res["color_count"] is None
    json.dumps(res)
    assert contour_polygon(np.zeros((10, 12))) == []


def test_tiny_and_border_lesions():
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    res = measure_lesion(one)
    assert res["area"] == 1 and res["max_diameter"] == pytest.approx(math.sqrt(2))
    full = measure_lesion(np.ones((20, 30), bool))  # touches every border
    assert full["area"] == 600 and full["max_diameter"] == pytest.approx(math.hypot(20, 30))


def test_contour_polygon():
    mask = disc(70, 60, 30) | disc(10, 10, 4)
    poly = contour_polygon(mask, max_points=64)
    assert 3 <= len(poly) <= 64
    points = np.array(poly)
    radii = np.hypot(points[:, 0] - 70, points[:, 1] - 60)  # the big disc's outline
    assert np.all(np.abs(radii - 30.5) < 1.0)
    assert len(contour_polygon(mask, max_points=1000)) > 64
    with pytest.raises(DermasegError):
        contour_polygon(mask, max_points=2)


@pytest.mark.parametrize("pixels", [[(10, 10)], [(10, 10), (11, 11)], [(10, 10), (10, 11),
                                    (11, 10), (11, 11)], [(9, 10), (10, 9), (10, 10), (10, 11),
                                                          (11, 10)]])
def test_tiny_lesions_keep_shape_measures_in_range(pixels):
    mask = np.zeros((20, 20), bool)
    for y, x in pixels:
        mask[y, x] = True
    res = measure_lesion(mask)
    assert 0 < res["compactness"] <= 1 and res["border_irregularity"] >= 1
    assert 0 < res["solidity"] <= 1 and 0 <= res["asymmetry"] <= 1
