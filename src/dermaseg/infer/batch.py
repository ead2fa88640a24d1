"""Predict a folder of images: stream, batch, write masks at the original size, resume.

Outputs in OUT (the mask folder is exactly what the ISIC scorer reads):
    <id>_segmentation.png        8-bit, 0 = skin, 255 = lesion, the image's own size
    quality/<id>.json            the mask's estimated Jaccard and review flag (dermaseg.quality),
    quality.csv, quality.jsonl   gathered at the end: a row per image
    <id>_uncertainty.png         1 - |2p - 1| x 255, 8-bit (--save-uncertainty)
    prob/<id>_prob.png           probability x 255, 8-bit (--save-prob)
    overlay/<id>_overlay.jpg     the image with the mask's contour drawn (--overlay)
    measurements/<id>.json       lesion measurements (--measure), gathered at the end into
    measurements.jsonl           one JSON object per line, sorted by id, and
    measurements.csv             the same as a table: one row per image (a spreadsheet)
    predict.json                 the settings that made the masks (models, TTA, post-processing)
The extras live in sub-folders because `isic-challenge-scoring` matches every file in the
prediction folder whose name holds the image number, and two matches are an error.

Memory stays bounded: files are listed (paths only), decoded a few batches ahead by a thread
pool, predicted one batch at a time and written at once. A mask is written last for its image,
so an interrupted run is resumed by skipping images whose mask and requested extras all exist
(`overwrite=False`); an image missing one of them is predicted again and all its outputs are
rewritten. predict never writes beside masks it did not write (no predict.json: ground
truth, say), and OUT never holds masks of two settings: a rerun with other settings is refused
unless `overwrite` redoes every mask there (the extras it does not redo are removed).
Several processes split the list with `shard=(i, n)`: image k goes to process k mod n.
A run holds a lock on OUT (dermaseg.output_lock; shards share it): a second run into the same
OUT is refused while the first is writing.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermaseg.data.discover import display_path
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import (
    name_problem,
    read_rgb,
    safe_child,
    save_png_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from dermaseg.infer.inputs import iter_decoded
from dermaseg.infer.measure_table import measurements_csv
from dermaseg.infer.overlay import draw_overlay
from dermaseg.infer.postprocess import PostprocessConfig
from dermaseg.infer.segment import Decoded, Segmentation, SegmentOptions, segment
from dermaseg.output_lock import output_lock
from dermaseg.progress import progress as progress_bar
from dermaseg.quality import uncertainty_map

MASK_SUFFIX = "_segmentation.png"


@dataclass
class PredictOptions:
    overwrite: bool = False  # redo images whose mask already exists
    save_prob: bool = False
    save_uncertainty: bool = False  # <id>_uncertainty.png beside the mask
    overlay: bool = False
    measure: bool = False
    pixel_size_mm: float | None = None  # for areas/lengths in mm
    postprocess: PostprocessConfig | None = None
    prefetch: int = 2  # batches decoded ahead of the model
    progress: bool = True
    # what made the masks (models, TTA, post-processing...), recorded in OUT/predict.json:
    # a rerun with other settings is refused unless `overwrite`
    settings: dict | None = None


@dataclass
class PredictSummary:
    written: list[str] = field(default_factory=list)  # ids
    skipped: list[str] = field(default_factory=list)  # ids whose mask existed
    failed: list[str] = field(default_factory=list)  # messages naming the file
    review: list[str] = field(default_factory=list)  # ids written whose mask needs a look


RECORD = "predict.json"  # the settings of the masks in OUT


def mask_path(out: Path, image_id: str) -> Path:
    """OUT/<id>_segmentation.png; like every output path, checked by fileio.safe_child."""
    return safe_child(out, f"{image_id}{MASK_SUFFIX}", "predicted mask")


def _prob_path(out: Path, image_id: str) -> Path:
    return safe_child(out / "prob", f"{image_id}_prob.png", "probability map")


def _overlay_path(out: Path, image_id: str) -> Path:
    return safe_child(out / "overlay", f"{image_id}_overlay.jpg", "overlay")


def _measurement_path(out: Path, image_id: str) -> Path:
    return safe_child(out / "measurements", f"{image_id}.json", "measurements")


def _quality_path(out: Path, image_id: str) -> Path:
    return safe_child(out / "quality", f"{image_id}.json", "quality estimate")


def _uncertainty_path(out: Path, image_id: str) -> Path:
    return safe_child(out, f"{image_id}_uncertainty.png", "uncertainty map")


def is_done(out: Path, image_id: str, options: PredictOptions) -> bool:
    """True when every output that `options` asks for exists for this image."""
    wanted = [(True, mask_path), (True, _quality_path), (options.save_prob, _prob_path),
              (options.save_uncertainty, _uncertainty_path),
              (options.overlay, _overlay_path), (options.measure, _measurement_path)]
    return all(where(out, image_id).exists() for asked, where in wanted if asked)


def check_record(out: Path, ids: list[str], options: PredictOptions,
                 every_id: list[str] | None = None) -> None:
    """Refuse to write beside masks predict did not write (ground truth, say), and, unless
    `overwrite`, beside masks made with other settings; with `overwrite`, refuse when OUT also
    holds masks of images outside this run (`every_id`: of all shards), and remove the extras
    of the images redone (`ids`) that the new settings would leave stale. Then record the
    settings. A run without --measure keeps the pixel size of the measurements already there.

    Raises:
        UsageError: each case, naming OUT and what differs.
    """
    record = out / RECORD
    masks = {path.name.removesuffix(MASK_SUFFIX) for path in out.glob(f"*{MASK_SUFFIX}")}
    if masks and not record.is_file():
        raise UsageError(
            f"{display_path(out)}: holds <id>{MASK_SUFFIX} masks that `dermaseg predict` did "
            f"not write (no {RECORD}): ground truth, perhaps. Choose another output folder "
            "(or delete those masks if they are old predictions)")
    wanted = json.loads(json.dumps(options.settings)) or {}
    earlier = _recorded_settings(record, options.overwrite) if masks else None
    if earlier is not None:
        own_pixel_size = wanted.get("pixel_size_mm")
        if not options.measure:
            wanted["pixel_size_mm"] = earlier.get("pixel_size_mm")
        changed = sorted(key for key in {**earlier, **wanted}
                         if earlier.get(key) != wanted.get(key))
        if changed:
            _allow_other_settings(out, changed, masks - set(every_id or ids), options.overwrite)
            for image_id in ids:
                for where in (_prob_path, _overlay_path, _measurement_path):
                    where(out, image_id).unlink(missing_ok=True)
            wanted["pixel_size_mm"] = own_pixel_size  # no earlier measurement is left
    write_json_atomic(record, {"settings": wanted})


def _recorded_settings(record: Path, overwrite: bool) -> dict | None:
    """The settings in predict.json; None when unreadable and `overwrite`."""
    try:
        return json.loads(record.read_text()).get("settings") or {}
    except (OSError, ValueError, AttributeError) as exc:
        if overwrite:
            return None
        raise UsageError(f"{display_path(record)}: unreadable ({exc}); pass --overwrite "
                         "to predict again") from exc


def _allow_other_settings(out: Path, changed: list[str], others: set[str],
                          overwrite: bool) -> None:
    """Other settings than the masks in OUT: only with `overwrite`, and only when this run
    redoes every one of them (else OUT would hold masks of two settings)."""
    differ = f"{', '.join(changed)} differ from {RECORD}"
    if not overwrite:
        raise UsageError(
            f"{display_path(out)}: its masks were predicted with other settings ({differ}); "
            "pass --overwrite to predict them again, or choose another output folder")
    if others:
        shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(
            f"{display_path(out)}: also holds masks of {len(others)} image(s) outside this "
            f"run ({shown}) made with other settings ({differ}); --overwrite would leave them "
            "beside the new ones: choose another output folder")


def assign_ids(files: list[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """Each file's id is its stem; a second file with the same stem is a failure, and so is
    a stem that cannot name its mask (a newline in it, too long: fileio.name_problem)."""
    seen: dict[str, Path] = {}
    items, failed = [], []
    for path in files:
        problem = name_problem(f"{path.stem}{MASK_SUFFIX}")
        if problem is not None:
            failed.append(f"{display_path(path)!r}: its mask {path.stem + MASK_SUFFIX!r} "
                          f"cannot be a file name: {problem}")
        elif path.stem in seen:
            failed.append(f"{display_path(path)}: same id {path.stem!r} as {seen[path.stem]}")
        else:
            seen[path.stem] = path
            items.append((path.stem, path))
    return items, failed


OVERLAY_COLOUR = (255, 40, 40)


def probability_png(prob: np.ndarray) -> np.ndarray:
    """Probability x 255, rounded half to even, as uint8; in place in one float32 buffer."""
    scaled = np.multiply(prob, 255, dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _write_outputs(out: Path, image_id: str, path: Path, result: Segmentation,
                   options: PredictOptions) -> None:
    """Every output asked for, the mask last (a resumed run redoes an image without one)."""
    names = {"id": display_path(image_id), "image": display_path(path)}  # JSON- and CSV-safe
    if options.save_prob:  # zlib level 1: 3x faster than 6 on a smooth map, ~30 % bigger
        save_png_atomic(_prob_path(out, image_id), probability_png(result.probability),
                        compress_level=1)
    if options.overlay:
        buffer = io.BytesIO()
        if result.image is None:  # segment_options asks for it with an overlay
            raise DermasegError(f"{display_path(path)}: no full-size image for the overlay")
        overlay = draw_overlay(result.image, [(result.mask, OVERLAY_COLOUR)])
        Image.fromarray(overlay).save(buffer, format="JPEG", quality=90)
        write_bytes_atomic(_overlay_path(out, image_id), buffer.getvalue())
    if options.measure:
        record = {**names, **(result.measurements or {})}
        write_json_atomic(_measurement_path(out, image_id), record)
    if options.save_uncertainty:
        save_png_atomic(_uncertainty_path(out, image_id), uncertainty_map(result.probability),
                        compress_level=1)
    write_json_atomic(_quality_path(out, image_id), {**names, **result.quality.to_dict()})
    save_png_atomic(mask_path(out, image_id), result.mask.astype(np.uint8) * 255)


def segment_options(options: PredictOptions) -> SegmentOptions:
    """What `segment` must do for the outputs `options` asks for."""
    return SegmentOptions(options.postprocess, describe=options.measure,
                          pixel_size_mm=options.pixel_size_mm, need_image=options.overlay)


def _flush(predictor, batch, out, options, summary, bar) -> None:
    """Segment a batch of (id, path, (reduced image, original size)) and write each image's
    outputs as soon as it is done (its maps at 6000x4000 are 96 MB of float32)."""
    decoded = [Decoded(image, original, functools.partial(read_rgb, path))
               for _, path, (image, original) in batch]
    results = segment(predictor, decoded, segment_options(options))
    for (image_id, path, _), result in zip(batch, results, strict=True):
        if isinstance(result, DermasegError):
            summary.failed.append(str(result))
        else:
            _write_outputs(out, image_id, path, result, options)
            summary.written.append(image_id)
            if result.quality.review:
                summary.review.append(image_id)
        bar.update(1)
    batch.clear()


def gather_records(out: Path, kind: str) -> None:
    """OUT/<kind>/<id>.json -> <kind>.jsonl (a JSON object per line) and <kind>.csv (a row
    per image: measure_table), both sorted by id, written atomically; `kind` is
    "measurements" or "quality"."""
    folder = out / kind
    if not folder.is_dir():
        return
    records = [json.loads(p.read_text())
               for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")]
    if not records:
        for name in (f"{kind}.jsonl", f"{kind}.csv"):
            (out / name).unlink(missing_ok=True)
        return
    lines = [json.dumps(record, sort_keys=False) for record in records]
    write_bytes_atomic(out / f"{kind}.jsonl", ("\n".join(lines) + "\n").encode())
    write_bytes_atomic(out / f"{kind}.csv", measurements_csv(records).encode())


def output_lines(out: Path, options: PredictOptions) -> list[str]:
    """Where each kind of output went, a line each: predict's closing summary."""
    where = [("masks", f"{display_path(out)}/<id>{MASK_SUFFIX} (0/255, each image's size)"),
             ("quality", f"{display_path(out / 'quality.csv')} (estimated Jaccard, review "
              "flag and why, a row per image), quality.jsonl"),
             ("probabilities", f"{display_path(out / 'prob')}/<id>_prob.png"
              if options.save_prob else None),
             ("uncertainty", f"{display_path(out)}/<id>_uncertainty.png (255: probability "
              "0.5)" if options.save_uncertainty else None),
             ("overlays", f"{display_path(out / 'overlay')}/<id>_overlay.jpg"
              if options.overlay else None),
             ("measurements", f"{display_path(out / 'measurements.csv')} (a row per image), "
              "measurements.jsonl" if options.measure else None),
             ("settings", display_path(out / RECORD))]
    return [f"{name + ':':<15}{text}" for name, text in where if text is not None]


def predict_files(predictor, files: list[Path], out: Path, options: PredictOptions,
                  shard: tuple[int, int] = (0, 1)) -> PredictSummary:
    """Predict every file of this shard into `out`; see the module docstring for the layout.

    Raises:
        FolderBusy: another predict (not a shard of this one) is writing into `out`.
    """
    with output_lock(out, "masks", shared=shard[1] > 1):
        return _predict_into(predictor, files, out, options, shard)


def _predict_into(predictor, files: list[Path], out: Path, options: PredictOptions,
                  shard: tuple[int, int]) -> PredictSummary:
    if shard[1] == 1:  # temp files of a killed run (with shards, they may be another's)
        for leftover in [*out.glob(".*.tmp"), *out.glob("*/.*.tmp")]:
            leftover.unlink(missing_ok=True)
    summary = PredictSummary()
    items, summary.failed = assign_ids(files)
    every_id = [image_id for image_id, _ in items]
    items = items[shard[0] :: shard[1]]
    check_record(out, [image_id for image_id, _ in items], options, every_id)
    if not options.overwrite:
        summary.skipped = [i for i, _ in items if is_done(out, i, options)]
        done = set(summary.skipped)
        items = [(i, p) for i, p in items if i not in done]
    batch: list = []
    ahead = max(1, options.prefetch) * predictor.batch_size
    with progress_bar(total=len(items), desc="predict", unit="image",
                      enabled=options.progress) as bar:
        for image_id, path, image, error in iter_decoded(items, ahead, predictor.meta.image_size):
            if error is not None:
                summary.failed.append(error)
                bar.update(1)
                continue
            batch.append((image_id, path, image))
            if len(batch) >= predictor.batch_size:
                _flush(predictor, batch, out, options, summary, bar)
        if batch:
            _flush(predictor, batch, out, options, summary, bar)
    for kind in ("measurements", "quality"):  # also after stale records were removed
        gather_records(out, kind)
    return summary
