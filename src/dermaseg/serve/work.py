"""What one request does, off the event loop: check and decode the upload, predict, measure.

Everything here is synchronous and runs in the server's thread pool. Bad input is an ApiError
with a 4xx status and a message that names the upload, never a 500.
"""

from __future__ import annotations

import base64
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from dermaseg.errors import DermasegError
from dermaseg.fileio import ImageTooLarge, open_header, read_rgb

# Formats a dermoscope or a phone produces; PIL reads many more (EPS, ICNS, PSD ...), which we
# refuse rather than expose their parsers to the network.
ALLOWED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF", "WEBP": "WebP",
                   "MPO": "JPEG"}


SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\0": "TIFF",
              b"MM\0*": "TIFF", b"RIFF": "WebP"}


class ApiError(HTTPException):
    """A client error with a plain message; becomes {"status", "detail"} JSON."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)


def safe_name(name: str | None) -> str:
    """An upload's file name reduced to a harmless label (no path, no control characters)."""
    base = Path(str(name or "upload")).name
    return re.sub(r"[^A-Za-z0-9._ -]", "_", base)[:100] or "upload"


def _probe(data: bytes, name: str) -> Image.Image:
    """Identify the format and size from the header without decoding the pixels."""
    try:
        return open_header(io.BytesIO(data), name)
    except ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from exc
    except UnidentifiedImageError as exc:
        kind = next((fmt for magic, fmt in SIGNATURES.items() if data.startswith(magic)), None)
        if kind is not None:
            raise ApiError(422, f"{name}: damaged or truncated {kind} file") from exc
        raise ApiError(415, f"{name}: not an image in a supported format "
                            f"({', '.join(sorted(set(ALLOWED_FORMATS.values())))})") from exc
    except Exception as exc:  # PIL's header parsers raise many types on crafted input
        raise ApiError(422, f"{name}: unreadable image header ({type(exc).__name__})") from exc


def check_upload(data: bytes, name: str, max_pixels: int) -> int:
    """The upload's pixel count, read from its header (nothing decoded).

    Raises:
        ApiError: 400 empty; 415 not an image or a refused format; 413 more than `max_pixels`
            pixels; 422 a damaged header or no pixels.
    """
    if not data:
        raise ApiError(400, f"{name}: empty upload")
    probe = _probe(data, name)
    if probe.format not in ALLOWED_FORMATS:
        raise ApiError(415, f"{name}: unsupported image format {probe.format}; send "
                            f"{', '.join(sorted(set(ALLOWED_FORMATS.values())))}")
    width, height = probe.size
    if width * height > max_pixels:
        raise ApiError(413, f"{name}: {width}x{height} = {width * height} pixels is over the "
                            f"limit of {max_pixels}")
    if width < 1 or height < 1:
        raise ApiError(422, f"{name}: image has no pixels ({width}x{height})")
    return width * height


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """Upload bytes (already passed by check_upload) -> HxWx3 uint8 RGB (EXIF orientation
    applied).

    Raises:
        ApiError: 422 an image that cannot be decoded (truncated, corrupt).
    """
    try:
        return read_rgb(data, name)
    except DermasegError as exc:
        raise ApiError(422, str(exc)) from exc
    except Exception as exc:  # decoders on crafted files: never a 500
        raise ApiError(422, f"{name}: cannot decode the image ({type(exc).__name__})") from exc


def mask_png(mask: np.ndarray) -> bytes:
    """Bool HxW -> 8-bit PNG bytes, 0 = skin, 255 = lesion."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Segmented:
    """The result for one image: the mask PNG and the JSON fields of SegmentResponse."""

    png: bytes
    fields: dict


def describe(mask: np.ndarray, image: np.ndarray, pixel_size_mm: float | None) -> dict:
    """Measurements, bbox, contour and area fraction of a bool mask."""
    from dermaseg.measure import contour_polygon, measure_lesion

    measurements = measure_lesion(mask, image, pixel_size_mm)
    return {
        "width": int(mask.shape[1]), "height": int(mask.shape[0]),
        "area_fraction": float(mask.mean()) if mask.size else 0.0,
        "bbox": measurements.get("bbox"), "contour": contour_polygon(mask),
        "measurements": measurements,
    }


def _check_all(uploads: list[tuple[str, bytes]], max_pixels: int) -> list:
    """check_upload for each upload: its pixel count, or the ApiError it caused.

    Raises:
        ApiError: 413 when the images together have more than `max_pixels` pixels (one request
            never decodes more than that).
    """
    checked: list = []
    for name, data in uploads:
        try:
            checked.append(check_upload(data, name, max_pixels))
        except ApiError as exc:
            checked.append(exc)
    total = sum(n for n in checked if isinstance(n, int))
    if total > max_pixels:
        count = sum(isinstance(n, int) for n in checked)
        raise ApiError(413, f"{count} images with {total} pixels in all: over the limit of "
                            f"{max_pixels} pixels per request; send fewer or smaller images")
    return checked


def segment_images(predictor, uploads: list[tuple[str, bytes]], max_pixels: int,
                   pixel_size_mm: float | None, want_json: bool = True) -> list:
    """Decode every upload, predict the good ones as one batch, describe each.

    Returns:
        One entry per upload, in order: a Segmented, or the ApiError that upload caused.

    Raises:
        ApiError: 413 when the images together have more than `max_pixels` pixels.
    """
    results: list = []
    images: list[tuple[int, np.ndarray]] = []
    checked = _check_all(uploads, max_pixels)
    for index, ((name, data), pixels) in enumerate(zip(uploads, checked, strict=True)):
        if isinstance(pixels, ApiError):
            results.append(pixels)
            continue
        try:
            images.append((index, decode_upload(data, name)))
            results.append(None)
        except ApiError as exc:
            results.append(exc)
    if not images:
        return results
    start = time.perf_counter()
    probs = predictor.predict_proba([image for _, image in images])
    elapsed_ms = 1000.0 * (time.perf_counter() - start) / len(images)
    for (index, image), prob in zip(images, probs, strict=True):
        mask = predictor.to_mask(prob)
        png = mask_png(mask)
        fields: dict = {"inference_ms": round(elapsed_ms, 2)}
        if want_json:
            fields.update(describe(mask, image, pixel_size_mm))
            fields["mask_png_base64"] = base64.b64encode(png).decode("ascii")
        results[index] = Segmented(png, fields)
    return results
