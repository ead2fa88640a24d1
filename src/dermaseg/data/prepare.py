"""Decode every pair once, letterbox it to a square, split train/val/test, write a manifest.

Output layout (everything written atomically, the manifest last):

    OUT/images/<id>.npy   uint8 size x size x 3, RGB, EXIF orientation applied
    OUT/masks/<id>.npy    uint8 size x size, 0 = skin, 1 = lesion
    OUT/meta/<id>.json    per-item record; lets a re-run skip items already prepared
    OUT/manifest.json     size, split settings, items (id, split, files, source paths,
                          original size, Letterbox, lesion fraction), skipped pairs + problems

Large JPEGs are decoded at reduced size with Pillow's `draft` (DCT scaling): a 6000x4000 ISIC
image prepared at 512 px is decoded at 750x500, about 3x faster than a full decode (the entropy
decoding of the whole file remains), and the full-size copy is never held in memory.
A re-run reuses every item whose meta record matches the size and the source files' size and
mtime, so an interrupted run (even SIGKILL) resumes where it stopped; items already in the
manifest keep their split and fold (`dermaseg.data.stable_splits`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Container
from functools import partial
from pathlib import Path

from dermaseg.data import stable_splits, staging
from dermaseg.data.check import default_workers
from dermaseg.data.discover import Pair, Problem, discover, display_path
from dermaseg.data.prepare_pair import (
    PrepareResult,
    item_file,
    prepare_pair_safely,
    reusable_record,
)
from dermaseg.data.splits import MANIFEST, SPLITS, check_folds, fold_counts, official_split
from dermaseg.errors import DermasegError, UsageError
from dermaseg.output_lock import output_lock
from dermaseg.parallel import parallel_map
from dermaseg.progress import Progress
from dermaseg.progress import progress as progress_bar

FORMAT = "dermaseg-prepared/1"


def is_prepared_folder(folder: Path) -> bool:
    """A folder written by `dermaseg data prepare` (manifest.json + images/)."""
    return (folder / MANIFEST).is_file() and (folder / "images").is_dir()


def _check_arguments(size: int, val: float, test: float) -> None:
    if size < 8:
        raise UsageError(f"--size {size}: must be at least 8 pixels")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise UsageError(f"--val {val} --test {test}: each must be in [0, 1) and their sum < 1")


def _clean_temporaries(*folders: Path) -> None:
    """Remove temp files an interrupted run left behind (the finished files are whole)."""
    for out in folders:
        for folder in ("images", "masks", "meta", "."):
            for leftover in (out / folder).glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def _run_all(todo: list[Pair], out: Path, size: int, workers: int, bar: Progress
             ) -> list[PrepareResult]:
    work = partial(prepare_pair_safely, out=out, size=size)
    return parallel_map(work, todo, workers, bar, "prepare", serial_below=4)


def _prepare_all(pairs: list[Pair], out: Path, work: Path, size: int, workers: int,
                 progress: bool) -> tuple[list[PrepareResult], list[Pair]]:
    """Results of every pair (reused when already prepared in `out`, or staged in `work` by
    an interrupted run, else decoded into `work`) and those decoded."""
    results, todo = [], []
    for pair in pairs:
        record = reusable_record(pair, out, size)
        if record is not None and work != out:
            _remove_item(work, pair.id)  # a staged copy would replace the one reused
        elif work != out:
            record = reusable_record(pair, work, size)
        if record is None:
            todo.append(pair)
        else:
            results.append(PrepareResult(pair, record, reused=True))
    with progress_bar(total=len(pairs), initial=len(results), desc="preparing", unit="pair",
                      enabled=progress) as bar:
        results += _run_all(todo, work, size, workers, bar)
    return results, todo


def _remove_item(out: Path, item_id: str) -> None:
    for path in (item_file(out, "images", item_id), item_file(out, "masks", item_id),
                 item_file(out, "meta", item_id)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _drop_duplicates(results: list[PrepareResult], work: Path,
                     earlier_ids: Container[str] = frozenset()) -> None:
    """Keep the first (by id) of prepared images with identical pixels, an item of the earlier
    split (`earlier_ids`) before a new one, so that a new copy of an earlier test image does not
    take its place and get drawn into train; the others get a duplicate_image problem and no
    record, so the same image never lands in two splits.
    The files this run wrote (into `work`) for a dropped item are removed."""
    first: dict[str, Pair] = {}
    for result in sorted(results, key=lambda r: (r.pair.id not in earlier_ids, r.pair.id)):
        if result.record is None:
            continue
        kept = first.setdefault(result.record["hash"], result.pair)
        if kept is not result.pair:
            detail = f"same pixels as {display_path(kept.image)}"
            result.problems.append(Problem("duplicate_image", result.pair.image, detail))
            result.record = None
            if not result.reused:
                _remove_item(work, result.pair.id)


def _manifest_item(record: dict, split: str) -> dict:
    keys = ("source_image", "source_mask", "orig_height", "orig_width", "letterbox",
            "lesion_fraction")
    item = {"id": record["id"], "split": split, "image": f"images/{record['id']}.npy",
            "mask": f"masks/{record['id']}.npy"}
    # the decoded pixels' hash: a later run finds the image again after a folder rename
    return item | {key: record[key] for key in keys} | {"hash": record.get("hash")}


def _split_items(results: list[PrepareResult], root: Path, val: float, test: float, seed: int,
                 keep_official: bool, earlier: stable_splits.EarlierSplit | None
                 ) -> tuple[list[dict], dict, stable_splits.EarlierSplit | None]:
    """Manifest items of the prepared pairs (by id) with their split, the manifest's "split"
    record and the earlier split kept (stable_splits.draw_splits)."""
    prepared = sorted(((r.pair, r.record) for r in results if r.record),
                      key=lambda prepared_pair: prepared_pair[0].id)
    # "train" alone is not an official split: val and test are then drawn at random
    labels = {pair.id: official_split(pair.image, root) if keep_official else None
              for pair, _ in prepared}
    splits, record, kept = stable_splits.draw_splits(labels, val, test, seed, earlier)
    return [_manifest_item(item, splits[pair.id]) for pair, item in prepared], record, kept


def _skipped(found_problems: list[Problem], results: list[PrepareResult]) -> list[dict]:
    """Files discovery could not pair, then each skipped pair with its problems."""
    skipped = [{"id": None, "problems": [p.to_dict()]} for p in found_problems]
    skipped += [{"id": r.pair.id, "image": display_path(r.pair.image),
                 "mask": display_path(r.pair.mask), "problems": [p.to_dict() for p in r.problems]}
                for r in sorted(results, key=lambda r: r.pair.id) if r.record is None]
    return skipped


def _reasons(skipped: list[dict]) -> str:
    """'empty_mask 1, unreadable 2': how many problems of each kind the skipped entries have."""
    counts: dict[str, int] = {}
    for entry in skipped:
        for problem in entry["problems"]:
            counts[problem["kind"]] = counts.get(problem["kind"], 0) + 1
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def _problem_lines(skipped: list[dict], shown: int) -> list[str]:
    return [f"  {problem['kind']:<24} {problem['path']}  {problem['detail']}"
            for entry in skipped[:shown] for problem in entry["problems"]]


def _no_usable_pair(root: Path, out: Path, created: bool, skipped: list[dict]) -> DermasegError:
    """The error for a run where every pair was skipped; removes `out` if this run made it."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
    more = f"\n  ... {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return DermasegError("\n".join([
        f"{display_path(root)}: no usable pair: {len(skipped)} skipped ({_reasons(skipped)})",
        *_problem_lines(skipped, 5)]) + more)


def _add_folds(items: list[dict], folds: int | None, seed: int,
               earlier: stable_splits.EarlierSplit | None, out: Path, created: bool) -> dict:
    """stable_splits.place_folds; when it refuses (fewer items than folds), `out` is removed if
    this run made it, as when no pair is usable: no folder of arrays without a manifest is left.
    """
    try:
        return stable_splits.place_folds(items, folds, seed, earlier)
    except UsageError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def prepare_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 512,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 42,
    workers: int | None = None,
    keep_official_split: bool = True,
    progress: bool = True,
    folds: int | None = None,
    split_from: str | os.PathLike | None = None,
    redraw_split: bool = False,
) -> dict:
    """Prepare every good pair under `root` into `out` and write `out/manifest.json`.

    Returns the manifest: {"format", "size", "source", "split", "counts", "items", "skipped",
    "run"}; "run": pairs read ("decoded", skipped ones included), reused, and the time.
    With `folds`, each non-test item has a "fold" and the manifest "folds": their number.
    Items of a manifest already in `out` (or in `split_from`, a prepared folder or manifest)
    keep their split and fold; `redraw_split` draws anew (see `dermaseg.data.stable_splits`).

    The run holds OUT's lock (dermaseg.output_lock): a second run into OUT is refused. Into
    a folder that already holds a dataset, the new arrays are staged and switched in at the
    end (`dermaseg.data.staging`), so an interrupted run leaves the earlier dataset whole.

    Raises:
        UsageError: `root` is not a folder, a size/ratio is out of range, `folds` is below
            2 or above the number of non-test items, or `split_from` is not a prepared
            folder or manifest (nothing is written then).
        DermasegError: no pair found under `root`, no usable pair (nothing is written then),
            `out` cannot be written, or another process is writing there (FolderBusy).
    """
    start = time.perf_counter()
    _check_arguments(size, val, test)
    check_folds(folds)
    root, out = Path(root).absolute(), Path(out)
    created = not out.exists()
    with output_lock(out, "prepared dataset"):
        staging.finish_switch(out)
        earlier, redrawn = stable_splits.earlier_split(out, split_from, redraw_split)
        folds = stable_splits.wanted_folds(folds, earlier)
        found = discover(root)
        if not found.pairs:
            raise DermasegError(f"{display_path(root)}: no image/mask pair found (expected "
                                "NAME.jpg + NAME_segmentation.png, ISIC or PH2 layout)")
        work = staging.work_folder(out)
        _clean_temporaries(out, work)
        workers = workers or default_workers()
        results, todo = _prepare_all(found.pairs, out, work, size, workers, progress)
        earlier = stable_splits.follow_sources(
            earlier, [r.pair for r in results],
            {r.pair.id: r.record.get("hash") for r in results if r.record})
        _drop_duplicates(results, work, earlier.splits if earlier else frozenset())
        skipped = _skipped(found.problems, results)
        if not any(result.record for result in results):
            raise _no_usable_pair(found.root, out, created, skipped)
        items, split, earlier = _split_items(results, found.root, val, test, seed,
                                             keep_official_split, earlier)
        split |= _add_folds(items, folds, seed, earlier, out, created)
        manifest = {
            "format": FORMAT, "size": size, "source": display_path(found.root),
            "split": split | ({"redrawn": redrawn} if redrawn else {}),
            "counts": {name: sum(item["split"] == name for item in items) for name in SPLITS},
            **({"folds": folds} if folds is not None else {}),
            "items": items, "skipped": skipped,
            "run": {"decoded": len(todo), "reused": len(found.pairs) - len(todo),
                    "workers": workers, "seconds": round(time.perf_counter() - start, 3)},
        }
        staging.commit(out, work, manifest)
    return manifest


def summary_lines(manifest: dict, out: str | os.PathLike, shown: int = 20) -> list[str]:
    """Human-readable summary of a prepare run: counts, splits, time, skipped pairs and why."""
    run, counts = manifest["run"], manifest["counts"]
    items, skipped = manifest["items"], manifest["skipped"]
    rate = run["decoded"] / max(run["seconds"], 1e-6)
    speed = f"{rate:.1f} pairs/s, {run['workers']} workers" if run["decoded"] else "all reused"
    split = manifest["split"]
    lines = [
        f"prepared {len(items)} pairs at {manifest['size']} px into {display_path(out)} "
        f"({run['decoded']} read, {run['reused']} reused) in {run['seconds']:.1f} s ({speed})",
        f"split ({stable_splits.split_kind(split)}): "
        + ", ".join(f"{k} {counts[k]}" for k in SPLITS),
        *stable_splits.origin_lines(split),
    ]
    if manifest.get("folds"):
        lines.append(f"folds ({manifest['folds']}, of train + val): "
                     + ", ".join(f"{k} {n}" for k, n in enumerate(fold_counts(manifest))))
    if skipped:
        pairs = sum(entry["id"] is not None for entry in skipped)
        lines.append(f"skipped {pairs} pair(s) and {len(skipped) - pairs} unpaired file(s): "
                     f"{_reasons(skipped)}")
        lines += _problem_lines(skipped, shown)
        if len(skipped) > shown:
            lines.append(f"  ... {len(skipped) - shown} more in "
                         f"{display_path(Path(out) / MANIFEST)}")
    return lines
