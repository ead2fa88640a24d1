"""Names that become paths (item ids, file names, uploads) are checked in one place
(fileio.name_problem / safe_child): nothing is written outside an output folder, and no file
name gets a newline (issue 18, item 1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dermaseg.fileio import UnsafeName, clean_name, name_problem, safe_child
from helpers.badinputs import run_cli

HOSTILE = ["../../../../../../outside/x", "/tmp/dermaseg-absolute/x", "two\nlines", "..",
           "tab\there", ".hidden"]


def _files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE + ["", "x" * 300, "nul\0byte"])
def test_the_one_rule_refuses_paths_control_characters_and_hidden_names(name, tmp_path):
    assert name_problem(name) is not None
    with pytest.raises(UnsafeName) as error:
        safe_child(tmp_path, name, "manifest.json: item id")
    assert "manifest.json: item id" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["ISIC_0000001", "IMD002", "a b (1)", os.fsdecode(b"caf\xe9")])
def test_ordinary_names_pass(name, tmp_path):
    assert name_problem(name) is None
    assert safe_child(tmp_path, name, "id").parent == tmp_path


@pytest.mark.parametrize("name", [*HOSTILE, None, "C:\\Users\\x\\photo.png", "é.png"])
def test_uploaded_names_are_cleaned_into_names_the_rule_accepts(name):
    assert name_problem(clean_name(name)) is None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synth_dir):
    from dermaseg.data.prepare import prepare_dataset

    folder = tmp_path_factory.mktemp("prep")
    prepare_dataset(synth_dir, folder / "prep", size=64, val=0.25, test=0.25, workers=1,
                    progress=False)
    return folder / "prep"


@pytest.mark.parametrize("hostile", HOSTILE[:3])
def test_evaluate_refuses_a_manifest_id_that_is_a_path(hostile, prepared, tiny_ckpt, tmp_path):
    """`evaluate` on a manifest whose test item has id ../../..../outside/x wrote its gallery
    picture outside -o; an absolute id made folders, a newline a file name with a newline."""
    root = tmp_path / "a" / "b" / "c" / "d"
    data = root / "prep"
    shutil.copytree(prepared, data)
    manifest = json.loads((data / "manifest.json").read_text())
    test_items = [item for item in manifest["items"] if item["split"] == "test"]
    for item in test_items:  # every test item: whichever is best or worst is in the gallery
        item["id"] = f"{hostile}{item['id']}"
    (data / "manifest.json").write_text(json.dumps(manifest))
    before = _files(tmp_path)
    out = root / "eval"
    code, output = run_cli("evaluate", tiny_ckpt, "--data", data, "-o", out, "--quiet")
    assert code == 1 and "Traceback" not in output, output
    assert "manifest.json" in output and "cannot become file names" in output, output
    assert repr(test_items[0]["id"]) in output  # named, a newline shown as \n
    assert _files(tmp_path) == before and not out.exists()
    assert not Path("/tmp/dermaseg-absolute").exists()


def test_the_gallery_writer_itself_refuses_a_path_as_id(tmp_path):
    """The last guard: even an id that reached the report (another entry point) cannot lead
    the gallery out of its folder."""
    from dermaseg.evaluation.evaluate import Evaluation
    from dermaseg.evaluation.files import write_evaluation

    result = Evaluation()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    result.add("good", mask, mask)
    result.add("../../../outside/x", mask, np.zeros_like(mask))
    root = tmp_path / "a" / "b"
    with pytest.raises(UnsafeName, match="gallery picture of image id '../../../outside/x'"):
        write_evaluation(result, root / "out", "t", [])
    assert _files(tmp_path) == {tmp_path / "a", root}  # nothing written, out removed again


def test_a_file_name_with_a_newline_is_named_not_predicted_or_paired(synth_dir, tiny_ckpt,
                                                                     tmp_path):
    """`predict` wrote `two\\nlines_segmentation.png`; `data check` and `evaluate` paired it."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("synth_0001", "two\nlines"):
        shutil.copy(synth_dir / "synth_0001.jpg", raw / f"{name}.jpg")
        shutil.copy(synth_dir / "synth_0001_segmentation.png", raw / f"{name}_segmentation.png")
    out = tmp_path / "masks"
    code, output = run_cli("predict", tiny_ckpt, raw, "-o", out, "--quiet")
    assert code == 1 and "'two\\nlines_segmentation.png' cannot be a file name" in output, output
    assert sorted(p.name for p in out.glob("*.png")) == ["synth_0001_segmentation.png"]
    code, output = run_cli("data", "check", raw)
    assert "bad_name" in output and "'two\\nlines.jpg': a control character" in output, output
    code, output = run_cli("evaluate", tiny_ckpt, "--data", raw, "-o", tmp_path / "e",
                           "--quiet")
    assert code == 0, output
    scored = json.loads((tmp_path / "e" / "metrics.json").read_text())["per_image"]
    assert list(scored) == ["synth_0001"]
    assert all("\n" not in p.name for p in (tmp_path / "e").rglob("*"))
