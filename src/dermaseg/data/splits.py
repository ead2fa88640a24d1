"""Who goes where: the train/val/test split and the cross-validation folds of a prepared set.

Splits: ISIC's official folders are kept when present, the rest is drawn with a seed.
Folds (`dermaseg data prepare --folds K`): every non-test item (train + val, the CV pool) gets
`item["fold"]` in 0..K-1, the manifest `"folds": K`. The assignment is a function of the seed and
the pool's ids only, so a re-run with the same data and settings gives the same folds; fold
sizes differ by at most one. A re-run into a prepared folder keeps the earlier items' split and
fold and draws only the new ones (`dermaseg.data.stable_splits`). `dermaseg train --fold F`
trains on the pool outside fold F and validates on fold F (`fold_members`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from dermaseg.errors import UsageError

MANIFEST = "manifest.json"  # written by `dermaseg data prepare` into the prepared folder
SPLITS = ("train", "val", "test")

# Folder-name words of an official split (ISIC: ISIC2018_Task1-2_Training_Input, ..._Test_...).
OFFICIAL_WORDS = {"training": "train", "train": "train", "validation": "val", "val": "val",
                  "valid": "val", "test": "test", "testing": "test"}


def official_split(image: Path, root: Path) -> str | None:
    """"train"/"val"/"test" when a folder between root and the image names an official split
    (ISIC: `ISIC2018_Task1-2_Training_Input`, `ISBI2016_ISIC_Part1_Test_Data`), else None."""
    try:
        folders = image.relative_to(root).parent.parts
    except ValueError:
        return None
    for folder in reversed(folders):
        for word in re.split(r"[^a-z]+", folder.lower()):
            if word in OFFICIAL_WORDS:
                return OFFICIAL_WORDS[word]
    return None


def drawn_count(fraction: float, kind: str, labels: dict[str, str | None], pool: int) -> int:
    """How many of the `pool` ids without an official val/test label are drawn into `kind`:
    none when an official label gives that split, else round(fraction * pool), at least one
    when the fraction is > 0 and the pool has 3 or more ids."""
    if kind in labels.values() or fraction <= 0:
        return 0
    return max(1, round(fraction * pool)) if pool >= 3 else 0


def assign_splits(labels: dict[str, str | None], val: float, test: float, seed: int
                  ) -> dict[str, str]:
    """Split ids into train/val/test. Ids labelled "val"/"test" keep their label; the rest are
    shuffled with `seed` and the val/test fractions missing from the labels are drawn from them
    (drawn_count)."""
    split = {key: label for key, label in labels.items() if label in ("val", "test")}
    pool = sorted(key for key in labels if key not in split)
    random.Random(seed).shuffle(pool)
    n_test = drawn_count(test, "test", labels, len(pool))
    n_val = drawn_count(val, "val", labels, len(pool))
    for index, key in enumerate(pool):
        split[key] = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    return split


def check_folds(folds: int | None) -> None:
    """Raises UsageError unless `folds` is None (no cross-validation) or at least 2."""
    if folds is not None and folds < 2:
        raise UsageError(f"--folds {folds}: cross-validation needs at least 2 folds")


def check_fold_pool(pool: int, folds: int) -> None:
    """Raises UsageError unless `folds` >= 2 and the CV pool has at least `folds` items."""
    check_folds(folds)
    if pool < folds:
        raise UsageError(f"--folds {folds}: only {pool} non-test items to share among "
                         f"{folds} folds; use fewer folds")


def assign_folds(ids: list[str], folds: int, seed: int) -> dict[str, int]:
    """Fold 0..folds-1 of each id: the sorted ids shuffled with `seed`, then dealt out in turn,
    so fold sizes differ by at most one and the order of `ids` does not matter.

    Raises:
        UsageError: fewer than 2 folds, or fewer ids than folds.
    """
    check_fold_pool(len(ids), folds)
    pool = sorted(ids)
    random.Random(f"folds:{seed}").shuffle(pool)  # not the split's stream
    return {key: index % folds for index, key in enumerate(pool)}


def add_folds(items: list[dict], folds: int | None, seed: int) -> None:
    """Set item["fold"] on every non-test manifest item (in place); nothing when folds is None."""
    if folds is None:
        return
    assigned = assign_folds([item["id"] for item in items if item["split"] != "test"],
                            folds, seed)
    for item in items:
        if item["id"] in assigned:
            item["fold"] = assigned[item["id"]]


def fold_counts(manifest: dict) -> list[int]:
    """Items in each fold of a manifest prepared with --folds ([] without)."""
    folds = manifest.get("folds") or 0
    return [sum(item.get("fold") == fold for item in manifest["items"]) for fold in range(folds)]


def fold_members(manifest: dict, fold: int, where: str) -> tuple[list[dict], list[dict]]:
    """(training items, validation items) of `fold`: the CV pool outside it, and fold itself.

    Raises:
        UsageError: the manifest (`where`) has no folds, or `fold` is out of its range.
    """
    folds = manifest.get("folds")
    if not isinstance(folds, int) or folds < 2:
        raise UsageError(f"--fold {fold}: {where} has no cross-validation folds; prepare the "
                         "data with `dermaseg data prepare RAW -o PREP --folds 5`")
    if not 0 <= fold < folds:
        raise UsageError(f"--fold {fold}: out of range, {where} has folds 0..{folds - 1}")
    pool = [item for item in manifest["items"] if item["split"] != "test"]
    unassigned = [item["id"] for item in pool if not isinstance(item.get("fold"), int)]
    if unassigned:
        raise UsageError(f"--fold {fold}: {where}: items without a fold ({unassigned[0]}, ...); "
                         "prepare the data again with --folds")
    return ([item for item in pool if item["fold"] != fold],
            [item for item in pool if item["fold"] == fold])


def split_fingerprint(manifest: dict) -> str:
    """A short hash of which item is in which split and fold: runs whose data had the same
    items, split and folds have the same fingerprint (cross-validation compares it)."""
    rows = sorted([item["id"], item["split"], item.get("fold")] for item in manifest["items"])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
