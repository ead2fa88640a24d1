"""Image -> mask -> description, once for every caller: `predict`, the HTTP service and the
web page (through the service) differ only in how they read images and write results.

    images = [Decoded(reduced, original, reread), ...]      # as read by the caller
    for result in segment(predictor, images, SegmentOptions(describe=True)):
        result.mask, result.probability, result.contour, result.measurements, result.quality

Per batch: the network runs on the letterboxed inputs (the reduced decodes, as `data prepare`
makes them); then, one image at a time to bound memory, the probability is restored to the
image's own size, thresholded, post-processed, and (when asked) the lesion is described; the
mask's quality estimate (dermaseg.quality) is read from the network's map inside its box. The
full-size image is decoded only when a step needs its pixels (CRF, colour measurements, an
overlay), one image at a time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from dermaseg.errors import DermasegError
from dermaseg.geometry import restore_probability
from dermaseg.infer.postprocess import PostprocessConfig
from dermaseg.quality import Quality, assess


@dataclass
class Decoded:
    """An image as the caller read it: `reduced` (HxWx3 uint8, possibly a reduced decode),
    the `original` (height, width), and how to decode the full-size image if needed."""

    reduced: np.ndarray
    original: tuple[int, int]
    reread: Callable[[], np.ndarray]

    def full(self) -> np.ndarray:
        """The image at its own size: `reduced` itself unless that was a reduced decode.

        Raises:
            DermasegError: (from `reread`) the full image cannot be decoded.
        """
        if self.reduced.shape[:2] == tuple(self.original):
            return self.reduced
        return self.reread()


@dataclass(frozen=True)
class SegmentOptions:
    postprocess: PostprocessConfig | None = None
    describe: bool = False  # measurements and contour (needs the full-size image's colours)
    pixel_size_mm: float | None = None  # for lengths and areas in mm
    need_image: bool = False  # keep the full-size image in the result (an overlay, say)

    def needs_full_image(self) -> bool:
        return self.describe or self.need_image or bool(getattr(self.postprocess, "crf", 0))

    def postprocess_applied(self) -> dict:
        """The post-processing steps switched on, by name (empty: none)."""
        if self.postprocess is None:
            return {}
        default = PostprocessConfig()
        return {name: value for name, value in asdict(self.postprocess).items()
                if value != getattr(default, name)}


@dataclass
class Segmentation:
    """One image's result: bool mask and float32 probability at the image's own size."""

    mask: np.ndarray
    probability: np.ndarray
    image: np.ndarray | None  # the full-size image when a step read it
    postprocess: dict  # the steps applied (SegmentOptions.postprocess_applied)
    inference_ms: float  # network time per image of its batch (letterbox to probability)
    quality: Quality  # estimated Jaccard and review flag (of the mask before post-processing)
    measurements: dict | None = None  # dermaseg.infer.measure.measure_in_box, when described

    @functools.cached_property
    def contour(self) -> list[list[float]]:
        """Outer contour of the largest lesion region, [[x, y], ...] in image pixels."""
        from dermaseg.infer.measure import contour_polygon

        return contour_polygon(self.mask)

    @functools.cached_property
    def uncertain_band(self) -> dict[str, list[list[float]]]:
        """Where the border is uncertain: the outer contours of probability > 0.2 ("outer")
        and > 0.8 ("inner"), [[x, y], ...] in image pixels; the true border most likely
        lies between them."""
        from dermaseg.infer.measure import contour_polygon
        from dermaseg.quality import UNCERTAIN_HIGH, UNCERTAIN_LOW

        return {"outer": contour_polygon(self.probability > UNCERTAIN_LOW),
                "inner": contour_polygon(self.probability > UNCERTAIN_HIGH)}

    def summary(self) -> dict:
        """The JSON description: size, area fraction, bounding box, contour, measurements,
        quality (with the uncertain band of the border)."""
        mask = self.mask
        measurements = self.measurements or {}
        return {
            "width": int(mask.shape[1]), "height": int(mask.shape[0]),
            "area_fraction": float(mask.mean()) if mask.size else 0.0,
            "bbox": measurements.get("bbox"), "contour": self.contour,
            "measurements": measurements,
            "quality": {**self.quality.to_dict(), "uncertain_band": self.uncertain_band},
        }


def estimate_quality(predictor, output) -> Quality:
    """The quality of one network output (a predictor.Letterboxed), read inside its box."""
    box = output.box
    spread = None if output.spread is None else box.crop(output.spread)
    return assess(predictor.meta.quality, box.crop(output.probability), predictor.threshold,
                  spread)


def segment(predictor, images: Sequence[Decoded], options: SegmentOptions
            ) -> Iterator[Segmentation | DermasegError]:
    """Predict `images` as one batch, then yield each one's Segmentation, in order; an image
    whose full-size decode fails yields that DermasegError instead."""
    if not images:
        return
    start = time.perf_counter()
    boxed = predictor.predict_letterboxed([image.reduced for image in images],
                                          [image.original for image in images])
    inference_ms = round(1000.0 * (time.perf_counter() - start) / len(images), 2)
    applied = options.postprocess_applied()
    for decoded, output in zip(images, boxed, strict=True):
        try:
            image = decoded.full() if options.needs_full_image() else None
        except DermasegError as exc:
            yield exc
            continue
        probability = restore_probability(output.probability, output.box)
        mask = predictor.to_mask(probability, image, options.postprocess)
        result = Segmentation(mask, probability, image, applied, inference_ms,
                              estimate_quality(predictor, output))
        if options.describe:
            from dermaseg.infer.measure import measure_in_box

            result.measurements = measure_in_box(mask, image, options.pixel_size_mm)
        yield result
