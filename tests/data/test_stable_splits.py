"""Stable splits: re-running `data prepare` keeps every earlier item's split and fold; only new
items are drawn (`--redraw-split`, other settings: drawn anew; `--split-from OTHER`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.data.prepare import prepare_dataset, summary_lines
from dermaseg.data.splits import split_fingerprint
from dermaseg.data.stable_splits import EarlierSplit, keep_splits, place_folds
from dermaseg.data.synth import SynthOptions, synth_dataset
from helpers.badinputs import run_cli

SETTINGS = {"size": 32, "val": 0.2, "test": 0.2, "seed": 0, "workers": 1, "progress": False}
OPTIONS = ["--size", "32", "--val", "0.2", "--test", "0.2", "--seed", "0", "-j", "1"]
FIRST = 20  # pairs in the first run; the pool has 22


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """22 small synthetic pairs synth_0001..synth_0022; copy what a test needs (raw_with)."""
    folder = tmp_path_factory.mktemp("pool")
    synth_dataset(FIRST + 2, folder, seed=3, options=SynthOptions(min_side=40, max_side=56),
                  progress=False)
    return folder


def raw_with(pool: Path, folder: Path, numbers) -> Path:
    """Copy pairs synth_NNNN of `pool` into `folder` (made if needed); returns `folder`."""
    folder.mkdir(exist_ok=True)
    for number in numbers:
        for name in (f"synth_{number:04d}.jpg", f"synth_{number:04d}_segmentation.png"):
            shutil.copy2(pool / name, folder / name)
    return folder


def assignment(manifest: dict) -> dict[str, tuple[str, int | None]]:
    return {item["id"]: (item["split"], item.get("fold")) for item in manifest["items"]}


@pytest.fixture
def first(pool, tmp_path) -> tuple[Path, Path, dict]:
    """(raw folder of 20 pairs, prepared folder, its manifest with 4 folds)."""
    raw = raw_with(pool, tmp_path / "raw", range(1, FIRST + 1))
    out = tmp_path / "prep"
    return raw, out, prepare_dataset(raw, out, folds=4, **SETTINGS)


def test_added_pairs_keep_every_earlier_split_and_fold(pool, first, tmp_path):
    raw, out, before = first
    raw_with(pool, raw, [FIRST + 1, FIRST + 2])
    code, output = run_cli("data", "prepare", raw, "-o", out, *OPTIONS, "--folds", "4")
    assert code == 0, output
    after = json.loads((out / "manifest.json").read_text())
    old, new = assignment(before), assignment(after)
    assert {key: new[key] for key in old} == old
    added = {"synth_0021", "synth_0022"}
    assert set(new) - set(old) == added
    assert all((new[key][1] is None) == (new[key][0] == "test") for key in added)
    for kind, fraction in (("test", 0.2), ("val", 0.2)):
        assert abs(after["counts"][kind] - round(fraction * 22)) <= 1, after["counts"]
    sizes = [sum(fold == k for _, fold in new.values()) for k in range(4)]
    assert max(sizes) - min(sizes) <= 1
    split = after["split"]
    assert split["kept_from"] == "previous" and split["kept"] == FIRST and split["gone"] == 0
    assert sum(split["new"].values()) == 2
    assert split["folds_kept"] == before["counts"]["train"] + before["counts"]["val"]
    assert "split kept for 20 items from the previous manifest; 2 new items drawn (" in output
    assert "2 new items dealt to the smallest folds" in output
    fresh = prepare_dataset(raw, tmp_path / "fresh", folds=4, **SETTINGS)
    moved = [key for key in old if assignment(fresh)[key] != old[key]]
    assert moved, "a fresh draw would not have moved anything: the test proves nothing"


def test_removed_pair_leaves_the_others_unchanged(first):
    raw, out, before = first
    for path in raw.glob("synth_0007*"):
        path.unlink()
    after = prepare_dataset(raw, out, folds=4, **SETTINGS)
    expected = {key: value for key, value in assignment(before).items() if key != "synth_0007"}
    assert assignment(after) == expected
    assert after["split"]["gone"] == 1 and after["split"]["kept"] == FIRST - 1
    assert any("1 no longer in the data" in line for line in summary_lines(after, out))


def test_same_data_and_settings_change_nothing(first):
    raw, out, before = first
    again = prepare_dataset(raw, out, folds=4, **SETTINGS)
    assert again["items"] == before["items"] and again["counts"] == before["counts"]
    assert split_fingerprint(again) == split_fingerprint(before)


def test_other_settings_or_redraw_split_draw_anew(pool, first, tmp_path):
    raw, out, _ = first
    other_seed = prepare_dataset(raw, out, folds=4, **(SETTINGS | {"seed": 1}))
    fresh = prepare_dataset(raw, tmp_path / "fresh1", folds=4, **(SETTINGS | {"seed": 1}))
    assert assignment(other_seed) == assignment(fresh)
    assert other_seed["split"]["redrawn"] == "--seed 1 differs from the previous manifest's 0"
    assert "kept_from" not in other_seed["split"]
    assert ("split drawn anew: --seed 1 differs from the previous manifest's 0"
            in summary_lines(other_seed, out))
    raw_with(pool, raw, [FIRST + 1, FIRST + 2])
    code, output = run_cli("data", "prepare", raw, "-o", out, *OPTIONS, "--seed", "1",
                           "--folds", "4", "--redraw-split")
    assert code == 0 and "split drawn anew: --redraw-split" in output, output
    redrawn = json.loads((out / "manifest.json").read_text())
    fresh = prepare_dataset(raw, tmp_path / "fresh2", folds=4, **(SETTINGS | {"seed": 1}))
    assert assignment(redrawn) == assignment(fresh)


def test_unusable_previous_manifest_draws_anew(first, tmp_path):
    raw, out, before = first
    (out / "manifest.json").write_text("{cut short")
    after = prepare_dataset(raw, out, folds=4, **SETTINGS)
    assert after["items"] == before["items"] and after["run"]["reused"] == FIRST
    assert after["split"]["redrawn"].startswith("the previous manifest cannot be used (")


def test_other_fold_count_keeps_the_split_and_redraws_the_folds(first):
    raw, out, before = first
    after = prepare_dataset(raw, out, folds=3, **SETTINGS)
    assert {key: split for key, (split, _) in assignment(after).items()} == {
        key: split for key, (split, _) in assignment(before).items()}
    assert after["split"]["folds_redrawn"] == "--folds 3 differs from the previous manifest's 4"
    assert "folds drawn anew: --folds 3 differs" in "\n".join(summary_lines(after, out))
    assert sorted({item["fold"] for item in after["items"] if "fold" in item}) == [0, 1, 2]
    dropped = prepare_dataset(raw, out, **SETTINGS)  # no --folds: said, not silent
    assert not any("fold" in item for item in dropped["items"])
    assert ("no folds (no --folds): the previous manifest had 3; give --folds 3 to keep them"
            in summary_lines(dropped, out))


def test_split_from_another_size_gives_identical_splits(pool, first, tmp_path):
    raw, other, before = first
    out = tmp_path / "at24"
    code, output = run_cli("data", "prepare", raw, "-o", out, "--size", "24", "--seed", "7",
                           "-j", "1", "--split-from", other)
    assert code == 0, output
    after = json.loads((out / "manifest.json").read_text())
    assert after["size"] == 24 and after["folds"] == 4
    assert split_fingerprint(after) == split_fingerprint(before)
    assert after["split"]["kept_from"] == str(other / "manifest.json")
    assert f"split kept for 20 items from {other / 'manifest.json'}; 0 new items drawn" in output
    assert "split (seed 7 for new items): " in output
    bigger = raw_with(pool, tmp_path / "bigger", range(1, FIRST + 3))
    grown = prepare_dataset(bigger, tmp_path / "grown", split_from=other / "manifest.json",
                            **(SETTINGS | {"size": 24}))
    old = assignment(before)
    assert {key: assignment(grown)[key] for key in old} == old
    assert sum(grown["split"]["new"].values()) == 2 and grown["folds"] == 4


def test_split_from_something_else_is_refused_before_writing(first, tmp_path):
    raw, _, _ = first
    not_json = tmp_path / "notes.json"
    not_json.write_text("{not json")
    no_items = tmp_path / "other.json"
    no_items.write_text(json.dumps({"size": 32}))
    cases = [(raw, "not a prepared folder (no manifest.json in it)"),
             (tmp_path / "missing", "no such file or folder"),
             (not_json, "is not a manifest written by `dermaseg data prepare` (Expecting"),
             (no_items, "no 'items' list")]
    out = tmp_path / "never"
    for source, words in cases:
        code, output = run_cli("data", "prepare", raw, "-o", out, "--split-from", source)
        assert code == 2 and f"--split-from {source}: " in output and words in output, output
        assert "Traceback" not in output and not out.exists()
    code, output = run_cli("data", "prepare", raw, "-o", out, "--split-from", first[1],
                           "--redraw-split")
    assert code == 2 and "--split-from and --redraw-split" in output and not out.exists()


def _pair(folder: Path, name: str, shade: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((30, 40, 3), 120, np.uint8)
    image[0, 0, 0] = shade  # distinct pixels: not duplicates
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:30] = 255
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_segmentation.png")


def test_official_labels_still_win(tmp_path):
    root = tmp_path / "ISIC2016"
    train, test = root / "ISBI2016_ISIC_Part1_Training_Data", root / "ISBI2016_ISIC_Part1_Test_Data"
    for index in range(10):
        _pair(test if index < 3 else train, f"ISIC_{index:07d}", index)
    settings = {"size": 16, "val": 0.2, "test": 0.2, "progress": False, "workers": 1}
    before = prepare_dataset(root, tmp_path / "out", **settings)
    _pair(test, "ISIC_0000010", 10)
    _pair(train, "ISIC_0000011", 11)
    after = prepare_dataset(root, tmp_path / "out", **settings)
    splits = {item["id"]: item["split"] for item in after["items"]}
    assert {key: splits[key] for key, _ in assignment(before).items()} == {
        key: split for key, (split, _) in assignment(before).items()}
    assert splits["ISIC_0000010"] == "test" and splits["ISIC_0000011"] in ("train", "val")
    assert after["split"]["official"] and after["split"]["kept"] == 10


def test_new_items_move_the_counts_toward_the_fractions():
    labels = {f"id{k:02d}": None for k in range(20)}
    kept = {f"id{k:02d}": "train" for k in range(10)}
    splits = keep_splits(labels, kept, val=0.2, test=0.2, seed=0)
    assert all(splits[key] == "train" for key in kept)
    new = [splits[f"id{k:02d}"] for k in range(10, 20)]
    assert (new.count("test"), new.count("val"), new.count("train")) == (4, 4, 2)
    assert keep_splits(dict(reversed(list(labels.items()))), kept, 0.2, 0.2, 0) == splits


def test_folds_of_removed_items_are_refilled_or_redrawn():
    items = [{"id": f"id{k}", "split": "train"} for k in range(7)]
    earlier = EarlierSplit("previous", {}, {}, {"id0": 0, "id1": 0, "id2": 1, "id3": 1,
                                                "id4": 2}, 3)
    record = place_folds(items, 3, seed=0, earlier=earlier)
    assert record == {"folds_kept": 5, "folds_new": 2}
    assert [item["fold"] for item in items[:5]] == [0, 0, 1, 1, 2]
    assert sorted(item["fold"] for item in items[5:]) == [0, 2]  # smallest first, then lowest
    gone = EarlierSplit("previous", {}, {}, {"id0": 0, "id1": 1, "id2": 1, "id3": 1}, 3)
    items = items[:4]
    record = place_folds(items, 3, seed=0, earlier=gone)
    assert record == {"folds_redrawn": "fold 2 of the previous manifest has no item left"}
    assert sorted(item["fold"] for item in items) == [0, 0, 1, 2]  # assign_folds, balanced


def test_new_copy_of_an_earlier_test_image_does_not_take_its_place(pool, first):
    """Duplicates keep the first by id; a new copy named to sort first would drop the earlier
    test item and be drawn afresh (into train or val): the earlier item wins instead."""
    raw, out, before = first
    tested = next(item["id"] for item in before["items"] if item["split"] == "test")
    shutil.copy2(raw / f"{tested}.jpg", raw / "aaa_copy.jpg")
    shutil.copy2(raw / f"{tested}_segmentation.png", raw / "aaa_copy_segmentation.png")
    raw_with(pool, raw, [FIRST + 1, FIRST + 2])
    after = prepare_dataset(raw, out, folds=4, **SETTINGS)
    old, new = assignment(before), assignment(after)
    assert {key: new.get(key) for key in old} == old
    assert "aaa_copy" not in new and after["split"]["gone"] == 0
    dropped = next(entry for entry in after["skipped"] if entry["id"] == "aaa_copy")
    assert dropped["problems"][0]["kind"] == "duplicate_image"
    assert not (out / "images" / "aaa_copy.npy").exists()


def test_an_image_keeps_its_split_when_a_same_named_one_takes_its_id(pool, tmp_path):
    """discover gives a name found in two folders to the first by path: an image added as
    a/NAME.jpg takes the plain id from b/NAME.jpg, which becomes b__NAME. Items follow their
    source file, so b/NAME.jpg keeps its split and the new image is drawn as new."""
    raw = tmp_path / "raw"
    raw.mkdir()
    raw_with(pool, raw / "b", range(1, FIRST + 1))
    out = tmp_path / "prep"
    before = prepare_dataset(raw, out, **SETTINGS)
    tested = next(item["id"] for item in before["items"] if item["split"] == "test")
    other = pool / f"synth_{FIRST + 1:04d}"  # different pixels under the tested one's name
    (raw / "a").mkdir()
    shutil.copy2(f"{other}.jpg", raw / "a" / f"{tested}.jpg")
    shutil.copy2(f"{other}_segmentation.png", raw / "a" / f"{tested}_segmentation.png")
    after = prepare_dataset(raw, out, **SETTINGS)
    new = assignment(after)
    assert new[f"b__{tested}"][0] == "test"
    for item in before["items"]:
        if item["id"] != tested:
            assert new[item["id"]][0] == item["split"]
    sources = {item["id"]: item["source_image"] for item in after["items"]}
    assert sources[tested].endswith(f"a/{tested}.jpg")
    assert sum(after["split"]["new"].values()) == 1 and after["split"]["gone"] == 0


def _split_by_pixels(manifest: dict, out: Path) -> dict[bytes, str]:
    """Each prepared image's split, keyed by its array's bytes (ids change between runs)."""
    return {np.load(out / item["image"]).tobytes(): item["split"] for item in manifest["items"]}


def test_moved_raw_folder_and_a_same_named_newcomer(pool, tmp_path):
    """The raw folder is moved (every source path changes) and an image added as a/NAME.jpg
    takes b/NAME.jpg's plain id: b/NAME.jpg is found by its pixels and keeps its split; the
    newcomer does not inherit it through the id."""
    raw = tmp_path / "raw"
    raw.mkdir()
    raw_with(pool, raw / "b", range(1, FIRST + 1))
    out = tmp_path / "prep"
    before = prepare_dataset(raw, out, **SETTINGS)
    kept = _split_by_pixels(before, out)
    tested = next(item["id"] for item in before["items"] if item["split"] == "test")
    moved = tmp_path / "elsewhere" / "raw"
    moved.parent.mkdir()
    raw.rename(moved)
    other = pool / f"synth_{FIRST + 1:04d}"
    (moved / "a").mkdir()
    shutil.copy2(f"{other}.jpg", moved / "a" / f"{tested}.jpg")
    shutil.copy2(f"{other}_segmentation.png", moved / "a" / f"{tested}_segmentation.png")
    after = prepare_dataset(moved, out, **SETTINGS)
    assert assignment(after)[f"b__{tested}"][0] == "test"
    now = _split_by_pixels(after, out)
    assert all(now[pixels] == split for pixels, split in kept.items())
    assert sum(after["split"]["new"].values()) == 1 and after["split"]["gone"] == 0


def test_renamed_folder_of_same_named_images_keeps_their_splits(pool, tmp_path):
    """Images named like others in a folder that sorts first get path-based ids (b__NAME);
    renaming b/ to c/ renames their ids (c__NAME) and their files: they are found by their
    pixels, every image keeps its split and nothing is drawn anew."""
    raw = tmp_path / "raw"
    raw.mkdir()
    raw_with(pool, raw / "a", range(1, FIRST + 1))
    (raw / "b").mkdir()
    for number in range(1, 9):  # other pixels under a's names
        source = pool / f"synth_{(number + 13) % 22 + 1:04d}"
        shutil.copy2(f"{source}.jpg", raw / "b" / f"synth_{number:04d}.jpg")
        shutil.copy2(f"{source}_segmentation.png",
                     raw / "b" / f"synth_{number:04d}_segmentation.png")
    out = tmp_path / "prep"
    before = prepare_dataset(raw, out, **SETTINGS)
    assert any(item["id"].startswith("b__") for item in before["items"])
    kept = _split_by_pixels(before, out)
    (raw / "b").rename(raw / "c")
    after = prepare_dataset(raw, out, **SETTINGS)
    assert any(item["id"].startswith("c__") for item in after["items"])
    assert _split_by_pixels(after, out) == kept
    assert sum(after["split"]["new"].values()) == 0 and after["split"]["gone"] == 0
