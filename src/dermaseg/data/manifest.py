"""Read a prepared folder's manifest.json and check it once, for every reader (training,
evaluation, calibration, the plan): a hand-edited or damaged manifest is refused with the
manifest and the item named, before any array is read or any file written.

Each item must have a unique id that can become file names (fileio.name_problem), a known
split, its arrays inside the prepared folder (a relative path without `..`), an original size
of at least 1 x 1 and a letterbox inside the canvas that fits that size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePath

from dermaseg.data.discover import display_path
from dermaseg.data.splits import MANIFEST, SPLITS
from dermaseg.data.staging import switch_pending
from dermaseg.errors import DermasegError
from dermaseg.fileio import name_problem
from dermaseg.geometry import Letterbox

ITEM_KEYS = ("id", "split", "image", "mask", "orig_height", "orig_width", "letterbox")
BOX_KEYS = tuple(Letterbox.__dataclass_fields__)


def read_manifest(root: str | os.PathLike) -> dict:
    """Read and validate `root/manifest.json`.

    Raises:
        DermasegError: naming the manifest when it is missing, not JSON, lacks a field, or
            an item is wrong (naming the item: see the module docstring); or when a `data
            prepare` was interrupted while switching in a new dataset.
    """
    path = Path(root) / MANIFEST
    shown = display_path(path)
    if switch_pending(Path(root)):
        raise DermasegError(f"{shown}: a `dermaseg data prepare` into {display_path(root)} "
                            "stopped while replacing this dataset; run it again to finish")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DermasegError(
            f"{shown}: no manifest; is {root} a folder written by `dermaseg data prepare`?"
        ) from exc
    except OSError as exc:
        raise DermasegError(f"{shown}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise DermasegError(f"{shown}: corrupt manifest, not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not _count(manifest.get("size")):
        raise DermasegError(f"{shown}: corrupt manifest, no integer 'size'")
    items = manifest.get("items")
    if not isinstance(items, list):
        raise DermasegError(f"{shown}: corrupt manifest, no 'items' list")
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        missing = [key for key in ITEM_KEYS if not isinstance(item, dict) or key not in item]
        if missing:
            raise DermasegError(f"{shown}: item {index} lacks {', '.join(missing)}")
        problem = item_problem(item, manifest) or _repeated(item["id"], index, first)
        if problem:
            raise DermasegError(f"{shown}: item {index} (id {item['id']!r}): {problem}")
    return manifest


def _count(value) -> bool:
    """A JSON integer of at least 1 (true and false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _repeated(item_id: str, index: int, first: dict[str, int]) -> str | None:
    earlier = first.setdefault(item_id, index)
    return None if earlier == index else f"the same id as item {earlier} (ids are unique)"


def item_problem(item: dict, manifest: dict) -> str | None:
    """What is wrong with one manifest item (its keys present), else None."""
    if not isinstance(item["id"], str):
        return "the id is not text"
    if (why := name_problem(item["id"])) is not None:
        return f"the id cannot become file names: {why}"
    if item["split"] not in SPLITS:
        return f"unknown split {item['split']!r} (expected {', '.join(SPLITS)})"
    for key in ("image", "mask"):
        bad = _path_problem(item[key])
        if bad is not None:
            return f"{key} {item[key]!r} is not a file inside the prepared folder ({bad})"
    if not (_count(item["orig_height"]) and _count(item["orig_width"])):
        return (f"original size {item['orig_height']!r} x {item['orig_width']!r} "
                "(expected whole numbers of pixels >= 1)")
    folds = manifest.get("folds")
    folds = folds if isinstance(folds, int) and folds >= 1 else 0
    fold = item.get("fold")
    if fold is not None and not (isinstance(fold, int) and 0 <= fold < folds):
        return f"fold {fold!r} (the manifest's 'folds' is {manifest.get('folds')!r})"
    return _letterbox_problem(item, manifest["size"])


def _path_problem(value) -> str | None:
    """Why `value` is not a relative path of plain names (fileio.name_problem), else None."""
    if not isinstance(value, str):
        return "not text"
    if PurePath(value).is_absolute() or value.startswith(("/", "\\")):
        return "an absolute path: it leads out of the folder"
    return next((why for part in value.split("/") if (why := name_problem(part))), None)


def _letterbox_problem(item: dict, size: int) -> str | None:
    """The recorded letterbox must lie inside the size x size canvas and fit the original."""
    box = item["letterbox"]
    if not isinstance(box, dict) or set(box) != set(BOX_KEYS) \
            or not all(isinstance(box[key], int) for key in BOX_KEYS):
        return f"letterbox {box!r} (expected the integers {', '.join(BOX_KEYS)})"
    fit = Letterbox.fit(item["orig_height"], item["orig_width"], size)
    inside = all(box[pad] >= 0 and box[side] >= 1 and box[pad] + box[side] <= size
                 for pad, side in (("pad_top", "new_height"), ("pad_left", "new_width")))
    fits = (box["size"] == size and box["orig_height"] == item["orig_height"]
            and box["orig_width"] == item["orig_width"]
            and abs(box["new_height"] - fit.new_height) <= 1
            and abs(box["new_width"] - fit.new_width) <= 1)
    if not (inside and fits):
        return (f"letterbox {box} does not fit a {item['orig_height']} x "
                f"{item['orig_width']} image in the {size} px canvas (expected "
                f"{fit.to_dict()})")
    return None
