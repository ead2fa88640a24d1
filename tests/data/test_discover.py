"""Finding image/mask pairs in the ISIC 2016/2017/2018, PH2 and flat layouts."""

from __future__ import annotations

import os
import shutil

import pytest

from dermaseg.data.discover import discover, display_path
from dermaseg.errors import UsageError


def _synth_files(synth_dir, count):
    images = sorted(synth_dir.glob("*.jpg"))[:count]
    return [(p, p.with_name(p.stem + "_segmentation.png")) for p in images]


def test_isic2018_layout(tmp_path, synth_dir):
    inputs = tmp_path / "ISIC2018_Task1-2_Training_Input"
    truth = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    inputs.mkdir()
    truth.mkdir()
    for number, (image, mask) in enumerate(_synth_files(synth_dir, 3)):
        shutil.copy(image, inputs / f"ISIC_{number:07d}.jpg")
        shutil.copy(mask, truth / f"ISIC_{number:07d}_segmentation.png")
    for folder in (inputs, truth):
        (folder / "ATTRIBUTION.txt").write_text("cc-by-nc")
        (folder / "LICENSE.txt").write_text("cc-by-nc")
    found = discover(tmp_path)
    assert [p.id for p in found.pairs] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert found.pairs[1].image == inputs / "ISIC_0000001.jpg"
    assert found.pairs[1].mask == truth / "ISIC_0000001_segmentation.png"
    assert found.problems == []


def test_isic2016_and_2017_names(tmp_path, synth_dir):
    (image, mask), (image2, mask2) = _synth_files(synth_dir, 2)
    data = tmp_path / "ISBI2016_ISIC_Part1_Training_Data"
    truth = tmp_path / "ISBI2016_ISIC_Part1_Training_GroundTruth"
    data.mkdir()
    truth.mkdir()
    shutil.copy(image, data / "ISIC_0000000.jpg")
    shutil.copy(mask, truth / "ISIC_0000000_Segmentation.png")
    shutil.copy(image2, data / "ISIC_0000001.jpg")
    shutil.copy(mask2, data / "ISIC_0000001_superpixels.png")  # ISIC 2017 extra: ignored
    shutil.copy(mask2, truth / "ISIC_0000001_segmentation.png")
    (data / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age\n")
    found = discover(tmp_path)
    assert [(p.id, p.mask.name) for p in found.pairs] == [
        ("ISIC_0000000", "ISIC_0000000_Segmentation.png"),
        ("ISIC_0000001", "ISIC_0000001_segmentation.png"),
    ]
    assert found.problems == []


def test_ph2_layout(tmp_path, synth_dir):
    root = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    for number, (image, mask) in zip((2, 3), _synth_files(synth_dir, 2), strict=True):
        case = root / f"IMD{number:03d}"
        for sub in ("Dermoscopic_Image", "lesion", "roi"):
            (case / f"IMD{number:03d}_{sub}").mkdir(parents=True)
        shutil.copy(image, case / f"IMD{number:03d}_Dermoscopic_Image" / f"IMD{number:03d}.bmp")
        shutil.copy(mask, case / f"IMD{number:03d}_lesion" / f"IMD{number:03d}_lesion.bmp")
        shutil.copy(mask, case / f"IMD{number:03d}_roi" / f"IMD{number:03d}_R1_Label4.bmp")
    found = discover(tmp_path)
    assert [p.id for p in found.pairs] == ["IMD002", "IMD003"]
    assert found.pairs[0].mask.name == "IMD002_lesion.bmp"
    assert found.problems == []
    (root / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp").unlink()
    missing = discover(tmp_path).problems
    assert [(p.kind, p.path.name) for p in missing] == [("missing_mask", "IMD003.bmp")]
    assert missing[0].detail == "no mask named IMD003_lesion/IMD003_lesion.bmp found"


def test_flat_layout_with_problems(tmp_path):
    for name in (
        "a.jpg",
        "a_segmentation.png",
        "b.png",
        "b_segmentation.png",
        "c.tif",
        "d_segmentation.png",
        "notes.txt",
        ".hidden.jpg",
        ".a.jpg.x1.tmp",
    ):
        (tmp_path / name).write_bytes(b"x")
    found = discover(tmp_path)
    assert [p.id for p in found.pairs] == ["a", "b"]
    assert [(p.kind, p.path.name) for p in found.problems] == [
        ("missing_mask", "c.tif"),
        ("orphan_mask", "d_segmentation.png"),
    ]


def test_same_name_in_two_folders_pairs_nearest(tmp_path):
    for folder in ("train", "val"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(b"x")
        (tmp_path / folder / "x_segmentation.png").write_bytes(b"x")
    found = discover(tmp_path)
    assert len(found.pairs) == 2
    assert len({p.id for p in found.pairs}) == 2
    for pair in found.pairs:
        assert pair.image.parent == pair.mask.parent


def test_same_id_in_several_folders_pairs_nearest_first(tmp_path):
    # a resized copy sorts first but is farther from the mask than the original image
    for name in ("a_resized/Input/X.jpg", "b_orig/Data/X.jpg", "b_orig/GT/X_segmentation.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = discover(tmp_path)
    assert [(p.image, p.mask) for p in found.pairs] == [
        (tmp_path / "b_orig/Data/X.jpg", tmp_path / "b_orig/GT/X_segmentation.png")]
    assert [(p.kind, p.path) for p in found.problems] == [
        ("missing_mask", tmp_path / "a_resized/Input/X.jpg")]


def test_spaces_non_utf8_and_symlink_loop(tmp_path):
    folder = tmp_path / "my images"
    folder.mkdir()
    (folder / "lesion one.jpg").write_bytes(b"x")
    (folder / "lesion one_segmentation.png").write_bytes(b"x")
    odd = os.fsdecode(b"l\xe9sion")  # Latin-1 bytes: not valid UTF-8
    (folder / f"{odd}.jpg").write_bytes(b"x")
    (folder / f"{odd}_segmentation.png").write_bytes(b"x")
    os.symlink("..", folder / "loop")
    os.symlink(folder, tmp_path / "again")
    found = discover(tmp_path)
    assert sorted(p.image.name for p in found.pairs) == sorted(["lesion one.jpg", f"{odd}.jpg"])
    assert found.problems == []
    shown = display_path(found.pairs[0].image) + display_path(found.pairs[1].image)
    assert "\\xe9" in shown
    shown.encode("utf-8")  # printable


def test_empty_and_missing_folders(tmp_path):
    assert discover(tmp_path).pairs == []
    with pytest.raises(UsageError, match="no such folder"):
        discover(tmp_path / "absent")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a folder"):
        discover(tmp_path / "file.jpg")


def test_fifo_and_broken_link_do_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink(tmp_path / "pipe.jpg", tmp_path / "link to pipe.png")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "broken.jpg")
    (tmp_path / "broken_segmentation.png").write_bytes(b"x")
    found = discover(tmp_path)
    assert [p.id for p in found.pairs] == ["broken"]  # check reports it unreadable
    assert sorted((p.kind, p.path.name) for p in found.problems) == [
        ("unreadable", "link to pipe.png"),
        ("unreadable", "pipe.jpg"),
    ]


def test_webp_images_pair_and_pass_the_check(tmp_path):
    import numpy as np
    from PIL import Image

    from dermaseg.data.check import check_pair

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "w.webp")
    lesion = np.zeros((40, 60), np.uint8)
    lesion[10:30, 20:40] = 255
    Image.fromarray(lesion).save(tmp_path / "w_segmentation.png")
    found = discover(tmp_path)
    assert [(p.id, p.image.name) for p in found.pairs] == [("w", "w.webp")]
    assert found.problems == [] and check_pair(found.pairs[0]) == []


def test_masks_named_otherwise_are_reported_with_the_name_to_use(tmp_path):
    for name in ("a.jpg", "a_mask.png", "b.jpg", "b-GT.png", "c.jpg", "c_segmentation.png",
                 "gasmask.jpg", "e_label.png"):
        (tmp_path / name).write_bytes(b"x")
    found = discover(tmp_path)
    assert [p.id for p in found.pairs] == ["c"]
    problems = {p.path.name: (p.kind, p.detail) for p in found.problems}
    assert problems["a_mask.png"] == (
        "misnamed_mask", "looks like the mask of a.jpg: name it a_segmentation.png")
    assert problems["b-GT.png"][0] == "misnamed_mask" and "b_segmentation.png" in \
        problems["b-GT.png"][1]
    assert problems["a.jpg"] == ("missing_mask", "no mask named a_segmentation.png found "
                                 "(a_mask.png looks like it: rename it)")
    # not beside an image of that id: an ordinary image without mask
    assert problems["e_label.png"][0] == "missing_mask"
    assert problems["gasmask.jpg"] == ("missing_mask",
                                       "no mask named gasmask_segmentation.png found")


def test_an_extra_mask_beside_a_paired_image_is_not_to_be_renamed_over_its_mask(tmp_path):
    """`a_mask.png` beside `a.jpg` + `a_segmentation.png`: renaming it as advised for an
    unpaired image would replace the mask in use."""
    for name in ("a.jpg", "a_segmentation.png", "a_mask.png"):
        (tmp_path / name).write_bytes(b"x")
    found = discover(tmp_path)
    assert [p.id for p in found.pairs] == ["a"]
    [problem] = found.problems
    assert (problem.kind, problem.path.name) == ("misnamed_mask", "a_mask.png")
    assert "name it" not in problem.detail
    assert problem.detail == ("looks like a second mask of a.jpg, which has a_segmentation.png; "
                              "not used (keep one mask per image)")
