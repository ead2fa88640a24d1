"""Predict a folder of images: stream, batch, write masks at the original size, resume.

Outputs in OUT (the mask folder is exactly what the ISIC scorer reads):
    <id>_segmentation.png        8-bit, 0 = skin, 255 = lesion, the image's own size
    prob/<id>_prob.png           probability x 255, 8-bit (--save-prob)
    overlay/<id>_overlay.jpg     the image with the mask's contour drawn (--overlay)
    measurements/<id>.json       lesion measurements (--measure), gathered at the end into
    measurements.jsonl           one JSON object per line, sorted by id
The extras live in sub-folders because `isic-challenge-scoring` matches every file in the
prediction folder whose name holds the image number, and two matches are an error.

Memory stays bounded: files are listed (paths only), decoded a few batches ahead by a thread
pool, predicted one batch at a time and written at once. A mask is written last for its image,
so an interrupted run is resumed by skipping images whose mask and requested extras all exist
(`overwrite=False`); an image missing one of them is predicted again and all its outputs are
rewritten.
Several processes split the list with `shard=(i, n)`: image k goes to process k mod n.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dermaseg.data.discover import IMAGE_SUFFIXES, MASK_STEM, display_path
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import read_rgb, save_png_atomic, write_bytes_atomic, write_json_atomic

MASK_SUFFIX = "_segmentation.png"


@dataclass
class PredictOptions:
    overwrite: bool = False  # redo images whose mask already exists
    save_prob: bool = False
    overlay: bool = False
    measure: bool = False
    pixel_size_mm: float | None = None  # for areas/lengths in mm
    postprocess: object | None = None  # dermaseg.infer.postprocess.PostprocessConfig
    prefetch: int = 2  # batches decoded ahead of the model
    progress: bool = True


@dataclass
class PredictSummary:
    written: list[str] = field(default_factory=list)  # ids
    skipped: list[str] = field(default_factory=list)  # ids whose mask existed
    failed: list[str] = field(default_factory=list)  # messages naming the file


OUTPUT_FOLDERS = ("prob", "overlay", "measurements")  # the extras, each in its own folder


def mask_path(out: Path, image_id: str) -> Path:
    return out / f"{image_id}{MASK_SUFFIX}"


def _prob_path(out: Path, image_id: str) -> Path:
    return out / "prob" / f"{image_id}_prob.png"


def _overlay_path(out: Path, image_id: str) -> Path:
    return out / "overlay" / f"{image_id}_overlay.jpg"


def _measurement_path(out: Path, image_id: str) -> Path:
    return out / "measurements" / f"{image_id}.json"


def is_done(out: Path, image_id: str, options: PredictOptions) -> bool:
    """True when every output that `options` asks for exists for this image."""
    wanted = [(True, mask_path), (options.save_prob, _prob_path),
              (options.overlay, _overlay_path), (options.measure, _measurement_path)]
    return all(where(out, image_id).exists() for asked, where in wanted if asked)


def _is_input_image(path: Path) -> bool:
    return (path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            and not MASK_STEM.match(path.stem))


def list_inputs(inputs: Iterable[str], exclude: Path | None = None):
    """Files, folders (searched recursively) and globs -> (sorted image paths, failures).

    Masks (`*_segmentation.*`), hidden files and the extras predict writes in `exclude` (the
    output folder: its prob/, overlay/ and measurements/) are left out. A name that matches
    nothing is a failure, not an exception.
    """
    found: set[Path] = set()
    failed: list[str] = []
    skip = [(exclude / name).resolve() for name in OUTPUT_FOLDERS] if exclude is not None else []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = [p for p in path.rglob("*") if p.is_file() and _is_input_image(p)]
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


def assign_ids(files: list[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """Each file's id is its stem; a second file with the same stem is a failure."""
    seen: dict[str, Path] = {}
    items, failed = [], []
    for path in files:
        if path.stem in seen:
            failed.append(f"{display_path(path)}: same id {path.stem!r} as {seen[path.stem]}")
        else:
            seen[path.stem] = path
            items.append((path.stem, path))
    return items, failed


def _decode(path: Path):
    try:
        return read_rgb(path), None
    except DermasegError as exc:
        return None, str(exc)


def iter_decoded(items: list[tuple[str, Path]], ahead: int) -> Iterator:
    """Yield (id, path, image or None, error or None) in order, decoding `ahead` in advance."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        queue = iter(items)
        for image_id, path in queue:
            pending.append((image_id, path, pool.submit(_decode, path)))
            if len(pending) >= ahead:
                break
        while pending:
            image_id, path, future = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], pool.submit(_decode, nxt[1])))
            yield (image_id, path, *future.result())


def _write_outputs(out: Path, image_id: str, path: Path, image, prob, mask, options) -> None:
    if options.save_prob:
        save_png_atomic(_prob_path(out, image_id),
                        np.round(prob * 255).clip(0, 255).astype(np.uint8))
    if options.overlay:
        from dermaseg.report import draw_overlay

        buffer = io.BytesIO()
        Image.fromarray(draw_overlay(image, [(mask, (255, 40, 40))])).save(
            buffer, format="JPEG", quality=90)
        write_bytes_atomic(_overlay_path(out, image_id), buffer.getvalue())
    if options.measure:
        from dermaseg.measure import measure_lesion

        record = {"id": image_id, "image": display_path(path),
                  **measure_lesion(mask, image, options.pixel_size_mm)}
        write_json_atomic(_measurement_path(out, image_id), record)
    save_png_atomic(mask_path(out, image_id), mask.astype(np.uint8) * 255)


def _flush(predictor, batch, out, options, summary, bar) -> None:
    probs = predictor.predict_proba([image for _, _, image in batch])
    for (image_id, path, image), prob in zip(batch, probs, strict=True):
        mask = predictor.to_mask(prob, image, options.postprocess)
        _write_outputs(out, image_id, path, image, prob, mask, options)
        summary.written.append(image_id)
        bar.update(1)
    batch.clear()


def gather_measurements(out: Path) -> None:
    """measurements/<id>.json -> measurements.jsonl (sorted by id), written atomically."""
    folder = out / "measurements"
    if not folder.is_dir():
        return
    lines = [json.dumps(json.loads(p.read_text()), sort_keys=False)
             for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")]
    write_bytes_atomic(out / "measurements.jsonl", ("\n".join(lines) + "\n").encode())


def predict_files(predictor, files: list[Path], out: Path, options: PredictOptions,
                  shard: tuple[int, int] = (0, 1)) -> PredictSummary:
    """Predict every file of this shard into `out`; see the module docstring for the layout."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DermasegError(f"{display_path(out)}: cannot create the output folder "
                            f"({exc.strerror or exc})") from exc
    if shard[1] == 1:  # temp files of a killed run (with shards, they may be another's)
        for leftover in [*out.glob(".*.tmp"), *out.glob("*/.*.tmp")]:
            leftover.unlink(missing_ok=True)
    summary = PredictSummary()
    items, summary.failed = assign_ids(files)
    items = items[shard[0] :: shard[1]]
    if not options.overwrite:
        summary.skipped = [i for i, _ in items if is_done(out, i, options)]
        done = set(summary.skipped)
        items = [(i, p) for i, p in items if i not in done]
    batch: list = []
    ahead = max(1, options.prefetch) * predictor.batch_size
    with tqdm(total=len(items), unit="img", desc="predict", disable=not options.progress) as bar:
        for image_id, path, image, error in iter_decoded(items, ahead):
            if error is not None:
                summary.failed.append(error)
                bar.update(1)
                continue
            batch.append((image_id, path, image))
            if len(batch) >= predictor.batch_size:
                _flush(predictor, batch, out, options, summary, bar)
        if batch:
            _flush(predictor, batch, out, options, summary, bar)
    if options.measure:
        gather_measurements(out)
    return summary
