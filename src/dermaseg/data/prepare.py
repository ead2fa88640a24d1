"""Decode every pair once, letterbox it to a square, split train/val/test, write a manifest.

Output layout (everything written atomically, the manifest last):

    OUT/images/<id>.npy   uint8 size x size x 3, RGB, EXIF orientation applied
    OUT/masks/<id>.npy    uint8 size x size, 0 = skin, 1 = lesion
    OUT/meta/<id>.json    per-item record; lets a re-run skip items already prepared
    OUT/manifest.json     size, split settings, items (id, split, files, source paths,
                          original size, Letterbox, lesion fraction), skipped pairs + problems

Large JPEGs are decoded at reduced size with Pillow's `draft` (DCT scaling): a 6000x4000 ISIC
image prepared at 512 px is decoded at 750x500, about 15x less work than a full decode.
A re-run reuses every item whose meta record matches the size and the source files' size and
mtime, so an interrupted run (even SIGKILL) resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dermaseg.data.check import check_mask, default_workers, mask_array
from dermaseg.data.discover import Pair, Problem, discover, display_path
from dermaseg.data.geometry import Letterbox, letterbox_image
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import MAX_PIXELS, atomic_path, to_rgb_array, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "dermaseg-prepared/1"
SPLITS = ("train", "val", "test")
FIXABLE = frozenset({"mask_values_0_1"})  # problems prepare corrects instead of skipping the pair
# Folder-name words of an official split (ISIC: ISIC2018_Task1-2_Training_Input, ..._Test_...).
OFFICIAL_WORDS = {"training": "train", "train": "train", "validation": "val", "val": "val",
                  "valid": "val", "test": "test", "testing": "test"}


@dataclass
class PrepareResult:
    """What happened to one pair: its record (None when skipped) and its problems."""

    pair: Pair
    record: dict | None
    problems: list[Problem] = field(default_factory=list)
    reused: bool = False


def _stamp(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def decode_image(path: Path, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image with EXIF orientation applied; returns (image, original (width, height)).

    A JPEG at least twice as large as `size` is decoded at reduced size (DCT scaling, never
    below the letterboxed size), so the image may be smaller than the original size returned.

    Raises:
        ValueError, OSError, SyntaxError: unreadable, empty, truncated or too large.
    """
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"too large ({width}x{height} is over {MAX_PIXELS} pixels)")
        if image.format == "JPEG" and max(width, height) >= 2 * size:
            scale = size / max(width, height)
            image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        decoded = image.size
        oriented = ImageOps.exif_transpose(image)
    if oriented.size != decoded:  # EXIF rotated by 90 or 270 degrees
        width, height = height, width
    return oriented, (width, height)


def _read(path: Path, size: int | None):
    """(decoded image, original (width, height)) or (None, a Problem saying why not).

    Images are decoded with `decode_image`; masks (`size` None) in full, as stored."""
    try:
        if size is None:
            with Image.open(path) as mask:
                mask.load()
                return (mask, mask.size), None
        return decode_image(path, size), None
    except Image.DecompressionBombError as exc:
        return None, Problem("unreadable", path, f"too large ({exc})")
    except (OSError, ValueError, SyntaxError) as exc:
        return None, Problem("unreadable", path, str(exc) or type(exc).__name__)


def _save_npy(path: Path, array: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
    except OSError as exc:
        raise DermasegError(f"{display_path(path)}: cannot write ({exc.strerror or exc})") from exc


def prepare_pair(pair: Pair, out: Path, size: int) -> PrepareResult:
    """Decode, check, letterbox and write one pair; a bad pair gives its problems instead.

    Returns a PrepareResult whose record holds the original size, Letterbox, lesion fraction,
    a hash of the prepared pixels (for duplicates) and the sources' size + mtime.
    """
    image, image_problem = _read(pair.image, size)
    mask, mask_problem = _read(pair.mask, None)
    problems = [p for p in (image_problem, mask_problem) if p is not None]
    if image is None or mask is None:
        return PrepareResult(pair, None, problems)
    (image, (width, height)), (mask, _) = image, mask
    problems = check_mask(pair.mask, mask, (width, height))
    if any(p.kind not in FIXABLE for p in problems):
        return PrepareResult(pair, None, problems)
    stamps = {"image": _stamp(pair.image), "mask": _stamp(pair.mask)}
    values, _ = mask_array(mask)
    lesion = values > (0 if values.max() <= 1 else 127)
    box = Letterbox.fit(height, width, size)
    image_array, _ = letterbox_image(Image.fromarray(to_rgb_array(image)), size, box=box)
    mask_array, _ = letterbox_image(Image.fromarray(lesion.astype(np.uint8)), size,
                                    is_mask=True, box=box)
    _save_npy(out / "images" / f"{pair.id}.npy", image_array)
    _save_npy(out / "masks" / f"{pair.id}.npy", mask_array)
    record = {
        "id": pair.id, "size": size,
        "source_image": display_path(pair.image), "source_mask": display_path(pair.mask),
        "stamps": stamps, "orig_height": height, "orig_width": width,
        "letterbox": box.to_dict(), "lesion_fraction": round(float(lesion.mean()), 6),
        "hash": hashlib.blake2b(image_array.tobytes(), digest_size=16).hexdigest(),
        "notes": [p.to_dict() for p in problems],
    }
    write_json_atomic(out / "meta" / f"{pair.id}.json", record)
    return PrepareResult(pair, record, problems)
