"""The images a prediction reads: files, folders and globs, listed as `data prepare` lists
them; torchrun-style shards; decoding a few batches ahead of the model."""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dermaseg.data import discover
from dermaseg.data.discover import IMAGE_SUFFIXES, MASK_STEM, display_path
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import (
    read_rgb,
    read_rgb_reduced,
)

OUTPUT_FOLDERS = ("prob", "overlay", "measurements")  # the extras, each in its own folder


def _is_input_image(path: Path) -> bool:
    return (path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            and not MASK_STEM.match(path.stem) and not discover.IGNORED_STEM.search(path.stem))


def _folder_images(folder: Path, failed: list[str]) -> list[Path]:
    """The images under `folder` as `data prepare` sees them (discover.walk_images: symlinked
    folders too): not the masks, ISIC's superpixel maps, PH2's *_roi folders, nor a
    `NAME_mask` beside its image `NAME`. A FIFO or a folder that cannot be listed is added
    to `failed`, and so is a broken link; names are checked later (assign_ids), as for files
    given one by one."""
    problems: list[discover.Problem] = []
    files = [path for path in discover.walk_images(folder, problems, check_names=False)
             if not MASK_STEM.match(path.stem)]
    failed += [f"{display_path(problem.path)}: {problem.detail}" for problem in problems]
    failed += [f"{display_path(path)}: a broken or looping symbolic link"
               for path in files if not path.is_file()]
    files = [path for path in files if path.is_file()]
    stems = {(path.parent, path.stem) for path in files}
    return [path for path in files if not ((other := discover.OTHER_MASK_STEM.match(path.stem))
                                           and (path.parent, other["id"]) in stems)]


def list_inputs(inputs: Iterable[str], exclude: Path | None = None):
    """Files, folders (searched recursively) and globs -> (sorted image paths, failures).

    Masks (`*_segmentation.*`, and in folders what `data prepare` leaves out too: see
    _folder_images), hidden files and the extras predict writes in `exclude` (the output
    folder: its prob/, overlay/ and measurements/) are left out. A name that matches
    nothing is a failure, not an exception.
    """
    found: set[Path] = set()
    failed: list[str] = []
    skip = [(exclude / name).resolve() for name in OUTPUT_FOLDERS] if exclude is not None else []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = _folder_images(path, failed)
        elif path.is_file():
            candidates = [path]
        elif path.exists():  # reading a pipe or a device could block for ever
            failed.append(f"{item}: not a regular file (a pipe, socket or device)")
            candidates = []
        elif glob.has_magic(item):
            candidates = [Path(p) for p in glob.glob(item, recursive=True)]
            candidates = [p for p in candidates if p.is_file() and _is_input_image(p)]
            if not candidates:
                failed.append(f"{item}: no file matches this pattern")
        else:
            failed.append(f"{item}: no such file or folder")
            candidates = []
        for candidate in candidates:
            parents = candidate.resolve().parents
            if not any(folder in parents for folder in skip):
                found.add(candidate)
    return sorted(found, key=str), failed


def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n; None -> torchrun's RANK/WORLD_SIZE, else (0, 1).

    Raises:
        UsageError: not of the form i/n.
    """
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise UsageError(f"--shard {text}: expected i/n with 0 <= i < n, e.g. 0/4")
    return index, count


def _decode(path: Path, draft_size: int | None = None):
    try:
        if draft_size is None:
            return read_rgb(path), None
        return read_rgb_reduced(path, draft_size), None
    except DermasegError as exc:
        return None, str(exc)


def iter_decoded(items: list[tuple[str, Path]], ahead: int,
                 draft_size: int | None = None) -> Iterator:
    """Yield (id, path, image or None, error or None) in order, decoding `ahead` in advance.

    With `draft_size`, each image is (reduced decode, original (height, width)) from
    fileio.read_rgb_reduced: the network input of `data prepare`, and a few MB, not 72."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        queue = iter(items)
        for image_id, path in queue:
            pending.append((image_id, path, pool.submit(_decode, path, draft_size)))
            if len(pending) >= ahead:
                break
        while pending:
            image_id, path, future = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], pool.submit(_decode, nxt[1], draft_size)))
            yield (image_id, path, *future.result())
