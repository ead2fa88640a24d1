"""Hand-edited or damaged manifests (issue 18, item 2): `train` read an absolute .npy path
outside the prepared folder, trained duplicated items twice, dropped an item with an unknown
split silently and trained an item with a negative letterbox as a blank image. Every reader
now refuses such a manifest, naming it and the item."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dermaseg.data.manifest import read_manifest
from dermaseg.errors import DermasegError
from helpers.badinputs import run_cli

TRAIN = ["-c", "cpu_small", "-q", "-s", "train.max_epochs=1", "-s", "data.image_size=48",
         "-s", "data.batch_size=2"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synth_dir) -> Path:
    from dermaseg.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("manifest") / "prep"
    prepare_dataset(synth_dir, out, size=48, val=0.25, test=0.25, workers=1, progress=False)
    return out


def _outside(data: Path, item: dict) -> None:
    """The item's image array copied outside the prepared folder, named by absolute path."""
    outside = data.parent / "elsewhere.npy"
    shutil.copy(data / item["image"], outside)
    item["image"] = str(outside)


def _edit(case: str, items: list[dict], data: Path) -> None:
    first, second = items[0], items[1]
    if case == "absolute":
        _outside(data, first)
    elif case == "dotdot":
        first["image"] = f"../{data.name}/{first['image']}"
    elif case == "duplicate":
        second["id"] = first["id"]
    elif case == "split":
        first["split"] = "training"
    elif case == "negative_pad":
        first["letterbox"]["pad_top"] = -5
    elif case == "outside_canvas":
        first["letterbox"]["new_width"] = 200
    elif case == "wrong_original":
        first["orig_width"] = first["orig_width"] * 3  # the letterbox no longer fits it
    elif case == "id_path":
        first["id"] = "../../x"


CASES = {
    "absolute": "is not a file inside the prepared folder (an absolute path",
    "dotdot": "is not a file inside the prepared folder (a path, not a name",
    "duplicate": "the same id as item 0 (ids are unique)",
    "split": "unknown split 'training' (expected train, val, test)",
    "negative_pad": "does not fit a",
    "outside_canvas": "does not fit a",
    "wrong_original": "does not fit a",
    "id_path": "the id cannot become file names: a path, not a name",
}


@pytest.mark.parametrize("case", CASES)
def test_train_refuses_a_hand_edited_manifest_naming_the_item(case, prepared, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(prepared, data)
    manifest = json.loads((data / "manifest.json").read_text())
    _edit(case, manifest["items"], data)
    (data / "manifest.json").write_text(json.dumps(manifest))
    index = 1 if case == "duplicate" else 0
    code, output = run_cli("train", *TRAIN, "-d", data, "-o", tmp_path / "run")
    assert code == 1 and "Traceback" not in output, output
    assert f"{data / 'manifest.json'}: item {index} (id " in output, output
    assert CASES[case] in output, output
    assert not (tmp_path / "run").exists()


def test_evaluate_and_calibration_read_the_same_check(prepared, tmp_path, tiny_ckpt):
    data = tmp_path / "prep"
    shutil.copytree(prepared, data)
    manifest = json.loads((data / "manifest.json").read_text())
    test_index = next(i for i, item in enumerate(manifest["items"]) if item["split"] == "test")
    manifest["items"][test_index]["split"] = "tset"
    (data / "manifest.json").write_text(json.dumps(manifest))
    expected = f"item {test_index} (id {manifest['items'][test_index]['id']!r}): unknown split"
    code, output = run_cli("evaluate", tiny_ckpt, "--data", data, "-o", tmp_path / "e", "-q")
    assert code == 1 and expected in output, output
    assert not (tmp_path / "e").exists()
    code, output = run_cli("export", tiny_ckpt, "--calib", data, "-o", tmp_path / "m.onnx")
    assert code == 1 and expected in output, output
    assert not (tmp_path / "m.onnx").exists()


def test_a_prepared_manifest_passes_and_its_letterboxes_are_exact(prepared):
    manifest = read_manifest(prepared)
    assert len(manifest["items"]) == 12
    for item in manifest["items"]:
        image = np.load(prepared / item["image"])
        box = item["letterbox"]
        content = image[box["pad_top"]:box["pad_top"] + box["new_height"],
                        box["pad_left"]:box["pad_left"] + box["new_width"]]
        assert content.any(axis=2).mean() > 0.9  # the letterbox frames the picture


def test_a_fold_outside_the_folds_is_refused(prepared, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(prepared, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["folds"] = 3
    for index, item in enumerate(manifest["items"]):
        item["fold"] = None if item["split"] == "test" else index % 3
    pooled = next(i for i, item in enumerate(manifest["items"]) if item["fold"] is not None)
    manifest["items"][pooled]["fold"] = 3
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DermasegError,
                       match=rf"item {pooled} \(id .*\): fold 3 \(the manifest's 'folds' is 3\)"):
        read_manifest(data)
