"""One image/mask pair prepared: decoded once (a reduced JPEG decode where it can),
letterboxed, the mask made 0/1, saved as .npy arrays with the files' stamps; or reused when
its files are unchanged."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermaseg.data.check import FIXABLE, check_mask, mask_array, read_checked
from dermaseg.data.discover import Pair, Problem, display_path
from dermaseg.errors import DermasegError
from dermaseg.fileio import atomic_path, file_label, safe_child, to_rgb_array, write_json_atomic
from dermaseg.fileio import decode_image as fileio_decode_image
from dermaseg.geometry import Letterbox, letterbox_image


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
    """`fileio.decode_image` (EXIF-oriented, a big JPEG reduced by DCT scaling, never below the
    letterboxed size) with the original size as (width, height).

    Raises:
        DermasegError: unreadable, empty, truncated or too large (naming the file).
    """
    image, (height, width) = fileio_decode_image(path, draft_size=size)
    return image, (width, height)


def _read(path: Path, size: int | None):
    """(decoded image, original (width, height)) or (None, a Problem saying why not).

    Images are decoded with `decode_image`; masks (`size` None) in full, as stored, with
    `data check`'s reader (the same reasons for the same broken files)."""
    if size is None:
        mask, problem = read_checked(path, draft=False)
        return (None, problem) if mask is None else ((mask.image, mask.image.size), None)
    try:
        return decode_image(path, size), None
    except DermasegError as exc:  # "<file>: why"; the Problem names the file itself
        return None, Problem("unreadable", path, str(exc).removeprefix(f"{file_label(path)}: "))
    except Image.DecompressionBombError as exc:
        return None, Problem("unreadable", path, f"too large ({exc})")
    except (OSError, ValueError, SyntaxError) as exc:
        return None, Problem("unreadable", path, str(exc) or type(exc).__name__)


def item_file(out: Path, folder: str, item_id: str) -> Path:
    """OUT/images|masks/<id>.npy or OUT/meta/<id>.json, the id checked by fileio.safe_child
    (discover gives no other ids; this is the last guard)."""
    suffix = ".json" if folder == "meta" else ".npy"
    return safe_child(out / folder, f"{item_id}{suffix}", "prepared item id")


def _save_npy(path: Path, array: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
    except OSError as exc:
        raise DermasegError(f"{display_path(path)}: cannot write ({exc.strerror or exc})") from exc


def prepare_pair(pair: Pair, out: Path, size: int) -> PrepareResult:
    """Decode, check, letterbox and write one pair; a bad pair gives its problems instead.

    Returns a PrepareResult whose record holds the original size, Letterbox, lesion fraction,
    a hash of the decoded pixels (for duplicates) and the sources' size + mtime.
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
    # threshold as in check: a 0/1 mask marks lesion with 1, a 0/255 one with >= 128
    threshold = 0 if any(p.kind == "mask_values_0_1" for p in problems) else 127
    box = Letterbox.fit(height, width, size)
    rgb = image if image.mode == "RGB" else Image.fromarray(to_rgb_array(image))
    image_array, _ = letterbox_image(rgb, size, box=box)
    # nearest-neighbour resizing commutes with thresholding: resize first, at full speed
    resized, _ = letterbox_image(Image.fromarray(values), size, is_mask=True, box=box)
    mask_out = (resized > threshold).astype(np.uint8)
    _save_npy(item_file(out, "images", pair.id), image_array)
    _save_npy(item_file(out, "masks", pair.id), mask_out)
    record = {
        "id": pair.id, "size": size,
        "source_image": display_path(pair.image), "source_mask": display_path(pair.mask),
        "stamps": stamps, "orig_height": height, "orig_width": width,
        "letterbox": box.to_dict(),
        "lesion_fraction": round(np.count_nonzero(values > threshold) / values.size, 6),
        "hash": hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest(),  # decoded pixels
        "notes": [p.to_dict() for p in problems],
    }
    write_json_atomic(item_file(out, "meta", pair.id), record)
    return PrepareResult(pair, record, problems)


def prepare_pair_safely(pair: Pair, out: Path, size: int) -> PrepareResult:
    """prepare_pair, turning any unexpected decoder failure into a problem of that pair."""
    try:
        return prepare_pair(pair, out, size)
    except DermasegError:
        raise  # cannot write the output: stop the run
    except Exception as exc:  # a corrupt file can make a decoder fail in unexpected ways
        return PrepareResult(pair, None, [Problem("unreadable", pair.image, repr(exc))])


def reusable_record(pair: Pair, out: Path, size: int) -> dict | None:
    """The meta record of an item already prepared from the same sources at `size`, else None."""
    try:
        record = json.loads(item_file(out, "meta", pair.id).read_text())
        stamps = {"image": _stamp(pair.image), "mask": _stamp(pair.mask)}
    except (OSError, ValueError):
        return None
    same = (
        isinstance(record, dict) and record.get("size") == size and record.get("stamps") == stamps
        and record.get("source_image") == display_path(pair.image)
        and record.get("source_mask") == display_path(pair.mask)
    )
    files = [item_file(out, "images", pair.id), item_file(out, "masks", pair.id)]
    return record if same and all(f.is_file() for f in files) else None
