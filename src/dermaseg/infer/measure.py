"""Lesion measurements from a mask (and the image): the quantities of the ABCD rule.

Coordinates: x is the column, y the row, and pixel (row i, column j) has its centre at (x=j, y=i)
and covers the unit square around it. The lesion contour is the iso-0.5 line of the binary mask
(marching squares, via contourpy): it runs half-way between lesion and background pixel centres,
so a lesion n pixels wide spans n units.

Definitions (all in pixels; `_mm` / `_mm2` variants when `pixel_size_mm` is given):

* area: number of lesion pixels.
* perimeter: total length of the contour (outer borders of all components and borders of holes)
  after smoothing its vertices twice with the [1, 2, 1] / 4 kernel along the line, which removes
  the pixel staircase: a digital disc of radius r measures 2*pi*r within ~1 % (r >= 5), a
  rotated ellipse within ~1 %, a square ~2 % short (its corners are rounded).
* max_diameter: maximum Feret diameter, the largest distance between two points of the lesion
  taken as a union of unit pixel squares (found among the corners of its convex hull): a row
  of n pixels measures n, a single pixel sqrt(2).
* compactness: 4*pi*area / perimeter^2; 1 for a disc, smaller for elongated or ragged borders.
  border_irregularity is its inverse, perimeter^2 / (4*pi*area) (>= ~1).
* solidity: area / area of the convex hull of the pixel squares; < 1 for notched borders.
* asymmetry_major, asymmetry_minor: the lesion is reflected about its major (minor) principal
  axis through the centroid (axes of the pixel-coordinate covariance); the value is the fraction
  of the lesion area not covered by its mirror image (bilinear sampling), in [0, 1]
  (0: symmetric). asymmetry is their mean. Digitisation alone gives up to ~0.5 / r for a disc of
  radius r pixels, so measure lesions at least ~50 pixels across.
* colours (with an RGB image): the six colours of the dermoscopic ABCD rule (white, red, light
  brown, dark brown, blue-grey, black). Each lesion pixel is converted from sRGB to CIELAB (D65)
  and goes to the nearest reference colour of `ISIC_COLORS` by the CIE76 colour difference
  (Euclidean distance in L*a*b*); a pixel farther than `COLOR_MAX_DISTANCE` (25) from every
  reference is left unassigned (skin-like or foreign colours: ink, a green or purple cast). A
  colour is present when it holds at least 5 % of the lesion (`COLOR_MIN_FRACTION`).
  color_count is the number present (the ABCD colour score, 0..6), color_fractions the share of
  the lesion's pixels each colour holds (they add up to 1 minus the unassigned share),
  color_spread the mean over R, G, B of the standard deviation of the lesion pixels (RGB in
  [0, 1]), a variegation measure that does not depend on the reference colours. How the
  references were chosen and checked on real images: docs/prediction.md, "Colours".
* bbox: {x, y, width, height} of the lesion pixels; centroid: [x, y], the mean pixel centre.
"""

from __future__ import annotations

import math

import contourpy
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from dermaseg.errors import DermasegError
from dermaseg.geometry import mask_box

__all__ = ["ISIC_COLORS", "colour_calls", "contour_polygon", "contours", "measure_in_box",
           "measure_lesion", "srgb_to_lab"]

# The reference colours of the ABCD rule in CIELAB (L*, a*, b*; D65), as they appear in
# dermoscopy images (sRGB): melanin reads black, dark brown, light brown or, deep in the dermis,
# grey to blue-grey; haemoglobin red; fibrosis white. Chosen and checked on real images
# (docs/prediction.md, "Colours"; bench/colour_calls.py). The sRGB equivalents, for reading:
# white (232, 226, 219), red (196, 83, 79), light brown (187, 126, 83), dark brown (113, 72, 51),
# blue-grey (132, 131, 139), black (36, 31, 29).
ISIC_COLORS: dict[str, tuple[float, float, float]] = {
    "white": (90.0, 1.0, 4.0),
    "red": (50.0, 45.0, 25.0),
    "light_brown": (58.0, 19.0, 33.0),
    "dark_brown": (35.0, 15.0, 20.0),
    "blue_gray": (55.0, 2.0, -4.0),
    "black": (12.0, 2.0, 2.0),
}
COLOR_MAX_DISTANCE = 25.0  # CIE76 colour difference beyond which a pixel is unassigned
COLOR_MIN_FRACTION = 0.05  # share of the lesion a colour needs to count as present


SAMPLE_PIXELS = 100_000  # colour and asymmetry fractions use at most about this many pixels


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DermasegError(f"mask: expected a (H, W) array, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    return mask > 0.5 if np.issubdtype(mask.dtype, np.floating) else mask != 0


def contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed iso-0.5 contour lines of a mask, each an (n, 2) array of (x, y), first == last."""
    m = _as_bool(mask)
    padded = np.pad(m.astype(np.float64), 1)  # so that lesions touching the border close
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    return [np.asarray(line, dtype=np.float64) - 1.0 for line in lines if len(line) >= 3]


def _length(line: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(line, axis=0), axis=1).sum())


MIN_SMOOTHED = 16  # contour vertices; shorter contours are measured as traced


def _smooth(line: np.ndarray, passes: int = 2) -> np.ndarray:
    """A closed line with each vertex replaced by (previous + 2 * itself + next) / 4."""
    points = line[:-1]
    for _ in range(passes):
        points = (np.roll(points, 1, axis=0) + 2.0 * points + np.roll(points, -1, axis=0)) / 4.0
    return np.vstack([points, points[:1]])


def _polygon_area(line: np.ndarray) -> float:
    x, y = line[:, 0], line[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def _hull(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Convex hull vertices and hull area (degenerate point sets: all points, area 0)."""
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return points, 0.0
    return points[hull.vertices], float(hull.volume)


def _pixel_corners(m: np.ndarray) -> np.ndarray:
    """(x, y) corners of the border pixels' unit squares, (k, 2); the hull of the lesion's."""
    border = np.logical_and(m, np.logical_not(ndimage.binary_erosion(m, border_value=0)))
    ys, xs = np.nonzero(border)
    corners = [np.stack([xs + dx, ys + dy], axis=1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
    return np.unique(np.concatenate(corners).astype(np.float64), axis=0)


def _max_diameter(points: np.ndarray) -> float:
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _stride(count: int, sample: int = SAMPLE_PIXELS) -> int:
    """Step that keeps about `sample` of `count` pixels (fractions are estimated, not exact)."""
    return max(1, count // sample)


def _asymmetry(m: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[float, float]:
    """Non-overlapping fraction when reflected about the major and the minor principal axis."""
    coords = np.stack([xs, ys]).astype(np.float64)
    centre = coords.mean(axis=1, keepdims=True)
    if coords.shape[1] < 2:
        return 0.0, 0.0
    _, vectors = np.linalg.eigh(np.cov(coords))
    coords = coords[:, :: _stride(coords.shape[1])]  # a fraction: a regular sample estimates it
    values = []
    for axis in (vectors[:, 1], vectors[:, 0]):  # major (largest eigenvalue), then minor
        reflect = 2.0 * np.outer(axis, axis) - np.eye(2)
        mirrored = reflect @ (coords - centre) + centre
        overlap = ndimage.map_coordinates(
            m.astype(np.float64), [mirrored[1], mirrored[0]], order=1, cval=0.0
        )
        values.append(float(1.0 - overlap.sum() / coords.shape[1]))
    return values[0], values[1]


_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L*, a*, b*; D65 white) of uint8 sRGB colours, shape (..., 3) -> (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3.0 * delta**2) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def colour_calls(pixels: np.ndarray) -> np.ndarray:
    """For (n, 3) uint8 sRGB pixels, the index into `ISIC_COLORS` of each one's nearest
    reference colour in CIELAB, or -1 where every reference is farther than
    `COLOR_MAX_DISTANCE`."""
    refs = np.array(list(ISIC_COLORS.values()))
    distance = np.linalg.norm(srgb_to_lab(pixels)[:, None, :] - refs[None], axis=-1)
    nearest = distance.argmin(axis=1)
    return np.where(distance.min(axis=1) <= COLOR_MAX_DISTANCE, nearest, -1)


def _colours(image: np.ndarray, m: np.ndarray) -> dict:
    sample = image[m][:: _stride(int(m.sum()))]
    pixels = sample.astype(np.float64) / 255.0
    names = list(ISIC_COLORS)
    calls = colour_calls(sample)
    fractions = np.bincount(calls[calls >= 0], minlength=len(names)) / len(pixels)
    present = [n for n, f in zip(names, fractions, strict=True) if f >= COLOR_MIN_FRACTION]
    return {
        "colors": present,
        "color_count": len(present),
        "color_fractions": {n: round(float(f), 6) for n, f in zip(names, fractions, strict=True)},
        "color_spread": float(pixels.std(axis=0).mean()),
        "mean_rgb": [round(float(v) * 255.0, 3) for v in pixels.mean(axis=0)],
    }


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != (*shape, 3) or image.dtype != np.uint8:
        raise DermasegError(
            f"image: expected uint8 RGB of shape {(*shape, 3)} like the mask, "
            f"got {image.dtype} {image.shape}"
        )
    return image


def _shape_measures(m: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> dict:
    area = float(len(xs))
    lines = contours(m)
    perimeter = sum(_length(_smooth(line) if len(line) >= MIN_SMOOTHED else line)
                    for line in lines)
    hull_points, hull_area = _hull(_pixel_corners(m))
    # A few-pixel lesion's contour is shorter than a disc's of the same pixel count.
    compactness = min(1.0, 4.0 * math.pi * area / perimeter**2)
    major, minor = _asymmetry(m, ys, xs)
    return {
        "area": int(area),
        "perimeter": perimeter,
        "max_diameter": _max_diameter(hull_points),
        "compactness": compactness,
        "border_irregularity": 1.0 / compactness,
        "solidity": min(1.0, area / hull_area) if hull_area > 0 else 1.0,
        "asymmetry_major": major,
        "asymmetry_minor": minor,
        "asymmetry": (major + minor) / 2.0,
        "centroid": [float(xs.mean()), float(ys.mean())],
        "bbox": {
            "x": int(xs.min()),
            "y": int(ys.min()),
            "width": int(xs.max() - xs.min() + 1),
            "height": int(ys.max() - ys.min() + 1),
        },
    }


SHAPE_KEYS = ("perimeter", "max_diameter", "compactness", "border_irregularity", "solidity",
              "asymmetry_major", "asymmetry_minor", "asymmetry", "centroid", "bbox")
COLOUR_KEYS = ("colors", "color_count", "color_fractions", "color_spread", "mean_rgb")


def measure_lesion(
    mask: np.ndarray, image: np.ndarray | None = None, pixel_size_mm: float | None = None
) -> dict:
    """Measurements of the lesion in `mask`, as a JSON-serialisable dict (module docstring).

    Args:
        mask: (H, W) lesion mask: bool, or numbers where nonzero is lesion (floats: > 0.5).
        image: optional (H, W, 3) uint8 RGB image, for the colour measures.
        pixel_size_mm: optional side of one pixel in millimetres; adds area_mm2,
            perimeter_mm and max_diameter_mm.

    Returns:
        A dict with "empty" (bool) and the measures; for an empty mask the area is 0 and the
        shape and colour measures are None.

    Raises:
        DermasegError: wrong mask/image shape or dtype, or pixel_size_mm <= 0.
    """
    m = _as_bool(mask)
    if pixel_size_mm is not None and not pixel_size_mm > 0:
        raise DermasegError(f"pixel_size_mm: must be > 0, got {pixel_size_mm}")
    if image is not None:
        image = _check_image(image, m.shape)
    ys, xs = np.nonzero(m)
    result: dict = {"empty": len(xs) == 0, "height": m.shape[0], "width": m.shape[1]}
    if len(xs) == 0:
        result.update({"area": 0, **dict.fromkeys(SHAPE_KEYS)})
        if image is not None:
            result.update(dict.fromkeys(COLOUR_KEYS))
    else:
        result.update(_shape_measures(m, ys, xs))
        if image is not None:
            result.update(_colours(image, m))
    if pixel_size_mm is not None:
        s = float(pixel_size_mm)
        result["pixel_size_mm"] = s
        result["area_mm2"] = result["area"] * s * s
        for key in ("perimeter", "max_diameter"):
            result[f"{key}_mm"] = None if result[key] is None else result[key] * s
    return result


def contour_polygon(mask: np.ndarray, max_points: int = 200) -> list[list[float]]:
    """Outer contour of the biggest lesion region as [[x, y], ...] (pixel units), for drawing.

    The closed line that encloses the largest area, without its repeated last point, thinned
    to at most `max_points` points by taking evenly spaced vertices; traced inside the
    lesion's bounding box (a 6000x4000 mask is not copied to floats). Empty mask: [].

    Raises:
        DermasegError: when max_points < 3.
    """
    if max_points < 3:
        raise DermasegError(f"max_points: must be >= 3, got {max_points}")
    m = _as_bool(mask)
    box = mask_box(m, margin=1)
    if box is None:
        return []
    line = max(contours(m[box]), key=_polygon_area)[:-1]
    if len(line) > max_points:
        line = line[np.linspace(0, len(line) - 1, max_points).round().astype(int)]
    top, left = box[0].start, box[1].start
    return [[round(float(x), 2) + left, round(float(y), 2) + top] for x, y in line]


def measure_in_box(mask: np.ndarray, image: np.ndarray | None = None,
                   pixel_size_mm: float | None = None) -> dict:
    """measure.measure_lesion of a (H, W) bool mask, computed inside the lesion's bounding box
    (1-pixel margin): the contour, hull and asymmetry do not look outside it. Positions (bbox,
    centroid) are moved back to image coordinates; the other values are the same up to float
    rounding (~1e-12 relative: the coordinates are smaller)."""
    box = mask_box(mask, margin=1)
    if box is None or (image is not None and np.shape(image) != (*mask.shape, 3)):
        return measure_lesion(mask, image, pixel_size_mm)  # empty, or its error for the image
    result = measure_lesion(mask[box], None if image is None else image[box], pixel_size_mm)
    top, left = box[0].start, box[1].start
    result["height"], result["width"] = mask.shape
    result["bbox"]["x"] += left
    result["bbox"]["y"] += top
    result["centroid"] = [result["centroid"][0] + left, result["centroid"][1] + top]
    return result
