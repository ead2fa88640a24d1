"""The lesion's outline drawn on the image: the overlay `predict --overlay` writes and the
evaluation report's thumbnails show."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from dermaseg.geometry import mask_box
from dermaseg.infer.measure import contours


def draw_overlay(image: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
                 width: int | None = None) -> np.ndarray:
    """The image (H, W, 3 uint8) with each mask's contour drawn in its colour, a copy.

    The contour is `dermaseg.infer.measure.contours` (the tracer the measurements use), traced
    inside each mask's bounding box and drawn as lines `width` pixels wide centred on the
    lesion's border; `width` defaults to about 1/300 of the longer side (at least 1 pixel).
    """
    canvas = Image.fromarray(np.array(image, dtype=np.uint8, copy=True))
    width = width or max(1, round(max(canvas.size) / 300))
    draw = ImageDraw.Draw(canvas)
    for mask, colour in masks:
        box = mask_box(np.asarray(mask, dtype=bool), margin=1)
        if box is None:
            continue
        top, left = box[0].start, box[1].start
        for line in contours(mask[box]):
            points = [(float(x) + left, float(y) + top) for x, y in line]
            draw.line(points, fill=tuple(colour), width=width, joint="curve")
    return np.asarray(canvas)
