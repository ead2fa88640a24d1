"""Stable splits: a re-prepared dataset keeps the split and the folds its items had before.

`dermaseg data prepare RAW -o PREP` into a folder that already holds a manifest keeps, for every
item of that manifest, its train/val/test split, as long as the split settings are the same
(--val, --test, --seed, and whether an official split is in effect); the folds too when --folds
is the same. Only new items are drawn: shuffled with the seed, they fill test and val up to the
counts a fresh draw would give, the rest go to train; new fold members go to the smallest folds.
Items gone from RAW drop out; an official split label wins for any item that has one. So images
evaluated as "test" before are never trained on after one image is added (nnU-Net keeps its
splits_final.json for the same reason). `--split-from OTHER` keeps the split of another prepared
set (the same data at another --size); `--redraw-split` draws a fresh one.

The manifest's "split" records where its split came from: "kept_from" ("previous" or OTHER's
manifest), "kept" (items whose split is the earlier one), "moved" (by an official label), "new"
(new items per split), "gone"; "redrawn" says why an earlier split was not kept, and
"folds_kept", "folds_new", "folds_redrawn" the same for the folds. A fresh folder's manifest has
none of these keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from dermaseg.data.discover import display_path
from dermaseg.data.splits import (
    MANIFEST,
    SPLITS,
    add_folds,
    assign_splits,
    check_fold_pool,
    drawn_count,
)
from dermaseg.errors import UsageError

PREVIOUS = "previous"  # "kept_from" of the output folder's own earlier manifest


@dataclass
class EarlierSplit:
    """The split of an earlier manifest: where it came from, its settings, each id's split and
    fold (when it had folds)."""

    origin: str  # PREVIOUS or the other manifest's path
    settings: dict
    splits: dict[str, str]
    folds: dict[str, int]
    fold_count: int | None
    sources: dict[str, str] = field(default_factory=dict)  # id -> its source image
    hashes: dict[str, str] = field(default_factory=dict)  # id -> hash of its decoded pixels
    unmatched: int | None = None  # earlier items not found in the data (follow_sources)

    @property
    def name(self) -> str:
        return "the previous manifest" if self.origin == PREVIOUS else self.origin


def parse_split(manifest: object, origin: str) -> EarlierSplit:
    """The EarlierSplit of a manifest's JSON.

    Raises:
        ValueError: no "items" list, or an item without an id or a train/val/test split.
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("items"), list):
        raise ValueError("no 'items' list")
    splits, folds, sources, hashes = {}, {}, {}, {}
    for index, item in enumerate(manifest["items"]):
        if not (isinstance(item, dict) and isinstance(item.get("id"), str)
                and item.get("split") in SPLITS):
            raise ValueError(f"item {index} has no id or no train/val/test split")
        splits[item["id"]] = item["split"]
        if isinstance(item.get("source_image"), str):
            sources[item["id"]] = item["source_image"]
        if isinstance(item.get("hash"), str):
            hashes[item["id"]] = item["hash"]
        if type(item.get("fold")) is int:
            folds[item["id"]] = item["fold"]
    count = manifest.get("folds")
    fold_count = count if type(count) is int and count >= 2 else None
    folds = {key: fold for key, fold in folds.items() if fold_count and 0 <= fold < fold_count}
    settings = manifest.get("split")
    settings = settings if isinstance(settings, dict) else {}
    return EarlierSplit(origin, settings, splits, folds, fold_count, sources, hashes)


def follow_sources(earlier: EarlierSplit | None, pairs: list,
                   hashes: dict[str, str | None] | None = None) -> EarlierSplit | None:
    """`earlier` keyed by the ids of this run's `pairs` (discover.Pair). An item is the earlier
    one with the same source file; else the one with the same decoded pixels (`hashes`: id ->
    hash of this run's items; the earlier manifest's "hash"), for a folder moved or renamed;
    else the one with the same id, when that earlier item is not found otherwise (its file
    gone; manifests without hashes). Each earlier item is matched once.

    Ids can change between runs: discover gives a name found in two folders to the first by
    path, the others a path-based id, so an image added in a folder that sorts first takes the
    plain id, and renaming a folder renames the ids below it; matching by file, then by pixels,
    keeps each image's own split. None stays None."""
    if earlier is None:
        return None
    current = {pair.id: display_path(pair.image) for pair in pairs}
    hashes = hashes or {}
    by_source = {source: old for old, source in earlier.sources.items()}
    by_hash: dict[str | None, str] = {digest: old for old, digest in earlier.hashes.items()}
    renamed: dict[str, str] = {}
    for match in (lambda item_id: by_source.get(current[item_id]),
                  lambda item_id: by_hash.get(hashes.get(item_id)),
                  lambda item_id: item_id if item_id in earlier.splits else None):
        used = set(renamed.values())
        for item_id in current:
            old = None if item_id in renamed else match(item_id)
            if old is not None and old not in used:
                renamed[item_id] = old
                used.add(old)
    return dataclasses.replace(
        earlier, splits={new: earlier.splits[old] for new, old in renamed.items()},
        folds={new: earlier.folds[old] for new, old in renamed.items() if old in earlier.folds},
        sources={new: earlier.sources.get(old, "") for new, old in renamed.items()},
        hashes={new: earlier.hashes[old] for new, old in renamed.items()
                if old in earlier.hashes},
        unmatched=len(earlier.splits) - len(set(renamed.values())))


def read_split_from(path: str | os.PathLike) -> EarlierSplit:
    """The split of `--split-from PATH`: a prepared folder or its manifest.json.

    Raises:
        UsageError: naming the path: missing, no manifest in it, unreadable, not a manifest.
    """
    path = Path(path)
    where = f"--split-from {display_path(path)}"
    manifest = path / MANIFEST if path.is_dir() else path
    if not path.exists():
        raise UsageError(f"{where}: no such file or folder")
    if not manifest.is_file():
        raise UsageError(f"{where}: not a prepared folder (no {MANIFEST} in it); give a folder "
                         f"written by `dermaseg data prepare`, or its {MANIFEST}")
    shown = display_path(manifest.absolute())
    try:
        return parse_split(json.loads(manifest.read_text()), shown)
    except OSError as exc:
        raise UsageError(f"{where}: cannot read {shown} ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not JSON, not text, or not shaped like a manifest
        raise UsageError(f"{where}: {shown} is not a manifest written by `dermaseg data "
                         f"prepare` ({exc})") from exc


def earlier_split(out: Path, split_from: str | os.PathLike | None, redraw: bool
                  ) -> tuple[EarlierSplit | None, str | None]:
    """(The split to keep, or None; why an earlier one is not kept, or None). Reads and checks
    `split_from` first; else the manifest already in `out`, unless `redraw`. Writes nothing.

    Raises:
        UsageError: both `split_from` and `redraw`, or a bad `split_from` (read_split_from).
    """
    if split_from is not None:
        if redraw:
            raise UsageError("--split-from and --redraw-split: give one or the other")
        return read_split_from(split_from), None
    manifest = out / MANIFEST
    if not manifest.is_file():
        return None, None
    if redraw:
        return None, "--redraw-split"
    try:
        return parse_split(json.loads(manifest.read_text()), PREVIOUS), None
    except (OSError, ValueError) as exc:
        return None, f"the previous manifest cannot be used ({exc})"


def settings_change(earlier: EarlierSplit, val: float, test: float, seed: int, official: bool
                    ) -> str | None:
    """How this run's split settings differ from those the previous manifest recorded, e.g.
    "--seed 1 differs from the previous manifest's 0"; None when they are the same."""
    recorded = earlier.settings
    changes = [f"--{key} {value} differs from {earlier.name}'s {recorded.get(key, 'none')}"
               for key, value in (("val", val), ("test", test), ("seed", seed))
               if recorded.get(key) != value]
    if bool(recorded.get("official")) != official:
        now = "is" if official else "is not"
        changes.append(f"an official split {now} in effect now, unlike in {earlier.name}")
    return "; ".join(changes) or None


def keep_splits(labels: dict[str, str | None], kept: dict[str, str], val: float, test: float,
                seed: int) -> dict[str, str]:
    """Split of every id of `labels`: its official label ("val"/"test") first, else its split
    in `kept`, else drawn. The new ids, shuffled with `seed`, fill test then val up to the
    counts assign_splits would draw from the pool; the rest go to train. Kept ids never move."""
    split = {key: label for key, label in labels.items() if label in ("val", "test")}
    pool = [key for key in labels if key not in split]
    split |= {key: kept[key] for key in pool if key in kept}
    new = sorted(key for key in pool if key not in kept)
    random.Random(seed).shuffle(new)
    wanted = {kind: drawn_count(fraction, kind, labels, len(pool))
              for kind, fraction in (("test", test), ("val", val))}
    have = {kind: sum(split.get(key) == kind for key in pool) for kind in wanted}
    for key in new:
        split[key] = next((kind for kind in ("test", "val") if have[kind] < wanted[kind]),
                          "train")
        if split[key] in have:
            have[split[key]] += 1
    return split


def _origin_record(splits: dict[str, str], earlier: EarlierSplit) -> dict:
    old = earlier.splits
    return {
        "kept_from": earlier.origin,
        "kept": sum(old.get(key) == split for key, split in splits.items()),
        "moved": sum(key in old and old[key] != split for key, split in splits.items()),
        "new": {kind: sum(key not in old and split == kind for key, split in splits.items())
                for kind in SPLITS},
        "gone": (earlier.unmatched if earlier.unmatched is not None
                 else sum(key not in splits for key in old)),
    }


def draw_splits(labels: dict[str, str | None], val: float, test: float, seed: int,
                earlier: EarlierSplit | None) -> tuple[dict[str, str], dict, EarlierSplit | None]:
    """(split of each id, the manifest's "split" record, the earlier split kept or None).

    `labels`: each id's official split or None. The earlier split is kept (keep_splits) unless
    it came from the previous manifest and the settings differ (settings_change): then the
    split is drawn as in a fresh folder (assign_splits) and the record says why.
    """
    official = any(label in ("val", "test") for label in labels.values())
    record = {"val": val, "test": test, "seed": seed, "official": official}
    change = None
    if earlier is not None and earlier.origin == PREVIOUS:
        change = settings_change(earlier, val, test, seed, official)
    if earlier is None or change:
        if change:
            record["redrawn"] = change
        return assign_splits(labels, val, test, seed), record, None
    splits = keep_splits(labels, earlier.splits, val, test, seed)
    return splits, record | _origin_record(splits, earlier), earlier


def wanted_folds(folds: int | None, earlier: EarlierSplit | None) -> int | None:
    """--folds, or with --split-from and no --folds, the other manifest's fold count."""
    if folds is None and earlier is not None and earlier.origin != PREVIOUS:
        return earlier.fold_count
    return folds


def _deal_folds(items: list[dict], folds: int, seed: int, kept: dict[str, int]) -> int:
    """Give each non-test item its kept fold, the others (shuffled with `seed`) one by one to
    the smallest fold (the lowest number among equals); returns how many were dealt."""
    pool = [item for item in items if item["split"] != "test"]
    check_fold_pool(len(pool), folds)
    sizes = [0] * folds
    for item in pool:
        if item["id"] in kept:
            item["fold"] = kept[item["id"]]
            sizes[item["fold"]] += 1
    new = sorted((item for item in pool if item["id"] not in kept), key=lambda i: i["id"])
    random.Random(f"folds:{seed}").shuffle(new)
    for item in new:
        item["fold"] = sizes.index(min(sizes))
        sizes[item["fold"]] += 1
    return len(new)


def place_folds(items: list[dict], folds: int | None, seed: int,
                earlier: EarlierSplit | None) -> dict:
    """Set item["fold"] on every non-test item (in place), keeping the earlier split's folds
    when it has `folds` folds; returns what to add to the manifest's "split" record.

    Raises:
        UsageError: fewer non-test items than folds.
    """
    if folds is None:
        if earlier is not None and earlier.fold_count:
            return {"folds_dropped": f"{earlier.name} had {earlier.fold_count}; give --folds "
                                     f"{earlier.fold_count} to keep them"}
        return {}
    if earlier is None or earlier.fold_count is None:
        add_folds(items, folds, seed)
        return {}
    if earlier.fold_count != folds:
        add_folds(items, folds, seed)
        return {"folds_redrawn": f"--folds {folds} differs from {earlier.name}'s "
                                 f"{earlier.fold_count}"}
    dealt = _deal_folds(items, folds, seed, earlier.folds)
    empty = [k for k in range(folds) if not any(i.get("fold") == k for i in items)]
    if empty:
        add_folds(items, folds, seed)
        return {"folds_redrawn": f"fold {empty[0]} of {earlier.name} has no item left"}
    return {"folds_kept": sum(i["id"] in earlier.folds for i in items if "fold" in i),
            "folds_new": dealt}


def split_kind(split: dict) -> str:
    """How the split was drawn: "official", or the seed (that of the new items alone when an
    earlier split was kept)."""
    if split["official"]:
        return "official"
    return f"seed {split['seed']}" + (" for new items" if split.get("kept_from") else "")


def origin_lines(split: dict) -> list[str]:
    """Summary lines: how much of an earlier split was kept and what was drawn, or why an
    earlier split was drawn anew ([] for a fresh folder, and for manifests before this)."""
    lines = []
    if split.get("redrawn"):
        lines.append(f"split drawn anew: {split['redrawn']}")
    if split.get("kept_from"):
        where = ("the previous manifest" if split["kept_from"] == PREVIOUS
                 else split["kept_from"])
        new = split.get("new") or {}
        drawn = ", ".join(f"{new[kind]} {kind}" for kind in SPLITS if new.get(kind))
        parts = [f"split kept for {_items(split.get('kept', 0))} from {where}",
                 f"{_items(sum(new.values()), 'new')} drawn" + (f" ({drawn})" if drawn else "")]
        if split.get("moved"):
            parts.append(f"{_items(split['moved'])} moved to their official split")
        if split.get("gone"):
            parts.append(f"{split['gone']} no longer in the data")
        lines.append("; ".join(parts))
    if split.get("folds_redrawn"):
        lines.append(f"folds drawn anew: {split['folds_redrawn']}")
    if split.get("folds_dropped"):
        lines.append(f"no folds (no --folds): {split['folds_dropped']}")
    if "folds_kept" in split:
        lines.append(f"folds kept for {_items(split['folds_kept'])}; "
                     f"{_items(split.get('folds_new', 0), 'new')} dealt to the smallest folds")
    return lines


def _items(count: int, adjective: str = "") -> str:
    """'1 item', '3 new items'."""
    return " ".join(filter(None, [str(count), adjective, "item" if count == 1 else "items"]))
