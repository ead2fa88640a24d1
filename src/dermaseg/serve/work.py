"""What one request does, off the event loop: check and decode the upload, predict, measure.

Everything here is synchronous and runs in the server's thread pool. Bad input is an ApiError
with a 4xx status and a message that names the upload, never a 500.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass
from typing import overload

import numpy as np
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from dermaseg.errors import DermasegError
from dermaseg.fileio import ImageTooLarge, clean_name, open_header, read_rgb, read_rgb_reduced
from dermaseg.image_checks import ImageRefused, check_declared
from dermaseg.infer.segment import Decoded, SegmentOptions, segment

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
    """An upload's file name reduced to a harmless label (no path, no control characters):
    fileio.clean_name, the rule every name that becomes a path follows."""
    return clean_name(name)


def _probe(data: bytes, name: str) -> Image.Image:
    """Identify the format and size from the header without decoding the pixels."""
    try:
        return open_header(io.BytesIO(data), name, declared=False)
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
            pixels; 422 a damaged header, no pixels, or what image_checks.check_declared refuses
            (sides over 50:1, too little data for the pixels).
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
    try:  # as the commands refuse them
        check_declared(probe, io.BytesIO(data), name)
    except ImageRefused as exc:  # absurd proportions, or too little data for its pixels
        raise ApiError(422, str(exc)) from exc
    return width * height


@overload
def decode_upload(data: bytes, name: str, draft_size: None = None) -> np.ndarray: ...
@overload
def decode_upload(data: bytes, name: str, draft_size: int
                  ) -> tuple[np.ndarray, tuple[int, int]]: ...
def decode_upload(data: bytes, name: str, draft_size: int | None = None):
    """Upload bytes (already passed by check_upload) -> HxWx3 uint8 RGB (EXIF orientation
    applied); with `draft_size`, (reduced decode, original (height, width)) as
    fileio.read_rgb_reduced gives it: the network input of `data prepare`.

    Raises:
        ApiError: 422 an image that cannot be decoded (truncated, corrupt).
    """
    try:
        if draft_size is None:
            return read_rgb(data, name)
        return read_rgb_reduced(data, draft_size, name)
    except DermasegError as exc:
        raise ApiError(422, str(exc)) from exc
    except Exception as exc:  # decoders on crafted files: never a 500
        raise ApiError(422, f"{name}: cannot decode the image ({type(exc).__name__})") from exc


def mask_png(mask: np.ndarray) -> bytes:
    """Bool HxW -> 8-bit PNG bytes, 0 = skin, 255 = lesion."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Segmented:
    """The result for one image: the mask PNG and the JSON fields of SegmentResponse."""

    png: bytes
    fields: dict


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


def _decode_all(uploads: list[tuple[str, bytes]], checked: list, draft_size: int):
    """(results with each failure's ApiError or None, [(index, (reduced image, original))])."""
    results: list = []
    images: list = []
    for index, ((name, data), pixels) in enumerate(zip(uploads, checked, strict=True)):
        if isinstance(pixels, ApiError):
            results.append(pixels)
            continue
        try:
            images.append((index, decode_upload(data, name, draft_size)))
            results.append(None)
        except ApiError as exc:
            results.append(exc)
    return results, images


def _reread(name: str, data: bytes) -> np.ndarray:
    """The upload decoded at its own size.

    Raises:
        DermasegError: it cannot be decoded (the 422 of `decode_upload`)."""
    try:
        return decode_upload(data, name)
    except ApiError as exc:
        raise DermasegError(str(exc.detail)) from exc


def segment_images(predictor, uploads: list[tuple[str, bytes]], max_pixels: int,
                   options: SegmentOptions) -> list:
    """Decode every upload, segment the good ones as one batch (`dermaseg.infer.segment`, as
    `predict` does), and give each its mask PNG and, when `options.describe`, its JSON fields.

    Returns:
        One entry per upload, in order: a Segmented, or the ApiError that upload caused.

    Raises:
        ApiError: 413 when the images together have more than `max_pixels` pixels.
    """
    checked = _check_all(uploads, max_pixels)
    results, images = _decode_all(uploads, checked, predictor.meta.image_size)
    decoded = [Decoded(reduced, original, functools.partial(_reread, *uploads[index]))
               for index, (reduced, original) in images]
    for (index, _), result in zip(images, segment(predictor, decoded, options), strict=True):
        if isinstance(result, DermasegError):
            results[index] = ApiError(422, str(result))
            continue
        png = mask_png(result.mask)
        fields: dict = {"inference_ms": result.inference_ms}
        if options.describe:
            fields.update(result.summary())
            fields["postprocess"] = result.postprocess
            fields["mask_png_base64"] = base64.b64encode(png).decode("ascii")
        results[index] = Segmented(png, fields)
    return results
