"""Resize keeping the aspect ratio, pad to a square, and undo it.

The one definition of the network's input geometry, shared by `data prepare`, the training
data, the `Predictor`, the exported model's contract and the server: the longest side is scaled
to `size`, the image is centred, and the border is filled with zeros (black, like the vignette
of a dermoscope). `Letterbox` records what was done so that a prediction can be mapped back to
the original pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    orig_height: int
    orig_width: int
    size: int  # side of the square canvas
    new_height: int  # size of the resized image inside the canvas
    new_width: int
    pad_top: int
    pad_left: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        scale = size / max(height, width)
        new_h = max(1, min(size, round(height * scale)))
        new_w = max(1, min(size, round(width * scale)))
        return cls(height, width, size, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The content region of a (..., size, size) array, without the padding."""
        return array[
            ..., self.pad_top : self.pad_top + self.new_height,
            self.pad_left : self.pad_left + self.new_width,
        ]


def letterbox_image(
    image: Image.Image, size: int, *, is_mask: bool = False, box: Letterbox | None = None
):
    """Resize a PIL image into a `size` x `size` canvas; returns (uint8 array, Letterbox).

    Images use a box/bilinear filter (`reducing_gap` for fast large downscales); masks use
    nearest neighbour so they stay binary. `box` gives the geometry when `image` is a reduced
    decode of a larger original (JPEG draft): the recorded original size is then the true one.
    """
    box = box or Letterbox.fit(image.height, image.width, size)
    if is_mask:
        resized = image.resize((box.new_width, box.new_height), Image.Resampling.NEAREST)
    else:
        resized = image.resize(
            (box.new_width, box.new_height), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
    array = np.asarray(resized, dtype=np.uint8)
    canvas_shape = (size, size) + array.shape[2:]
    canvas = np.zeros(canvas_shape, dtype=np.uint8)
    canvas[box.pad_top : box.pad_top + box.new_height,
           box.pad_left : box.pad_left + box.new_width] = array
    return canvas, box


def restore_probability(prob: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map a (size, size) float probability map back to (orig_height, orig_width), bilinear."""
    content = box.crop(prob).astype(np.float32)
    image = Image.fromarray(content, mode="F")
    restored = image.resize((box.orig_width, box.orig_height), Image.Resampling.BILINEAR)
    return np.asarray(restored, dtype=np.float32)


def mask_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """(rows, columns) slices of the bounding box of a (H, W) mask's nonzero pixels, grown by
    `margin` pixels on each side and clipped to the array; None for an empty mask.

    Work that only concerns the lesion (components, holes, contours) is done inside this box:
    on a 6000x4000 image the box is usually a fraction of the 24 Mpx."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask[rows[0] : rows[-1] + 1], axis=0))
    height, width = mask.shape
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (slice(max(0, top - margin), min(height, bottom + margin)),
            slice(max(0, left - margin), min(width, right + margin)))
