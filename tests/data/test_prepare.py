"""`dermaseg data prepare`: geometry, binary masks, splits, bad pairs, incremental runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.data.prepare import prepare_dataset, summary_lines
from dermaseg.data.prepare_pair import decode_image
from dermaseg.data.splits import assign_splits
from dermaseg.errors import UsageError
from dermaseg.geometry import Letterbox

SIZE = 64


@pytest.fixture(scope="module")
def prepared(synth_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare_dataset(synth_dir, out, size=SIZE, val=0.25, test=0.25, workers=2,
                               progress=False)
    return out, manifest


def _pair(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, fmt: str = "png"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.{fmt}")
    Image.fromarray(mask).save(folder / f"{name}_segmentation.png")


def _disc(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 3) ** 2
    return np.where(inside, 255, 0).astype(np.uint8)


def test_geometry_and_binary_masks(prepared, synth_dir):
    out, manifest = prepared
    assert manifest["size"] == SIZE and len(manifest["items"]) == 12 and not manifest["skipped"]
    for item in manifest["items"]:
        with Image.open(item["source_image"]) as source:
            width, height = source.size
        assert (item["orig_height"], item["orig_width"]) == (height, width)
        box = Letterbox(**item["letterbox"])
        assert box == Letterbox.fit(height, width, SIZE)
        assert max(box.new_height, box.new_width) == SIZE
        assert box.new_width / box.new_height == pytest.approx(width / height, rel=0.05)
        image = np.load(out / item["image"])
        mask = np.load(out / item["mask"])
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 1}
        padding = np.ones((SIZE, SIZE), bool)
        padding[box.pad_top:box.pad_top + box.new_height,
                box.pad_left:box.pad_left + box.new_width] = False
        assert not image[padding].any() and not mask[padding].any()
        source_mask = np.asarray(Image.open(item["source_mask"])) > 127
        assert item["lesion_fraction"] == pytest.approx(source_mask.mean(), abs=1e-5)
        assert box.crop(mask).mean() == pytest.approx(source_mask.mean(), abs=0.05)


def test_split_ratios_and_seed(prepared):
    _, manifest = prepared
    assert manifest["counts"] == {"train": 6, "val": 3, "test": 3}
    ids = {f"case{i:03d}": None for i in range(200)}
    first = assign_splits(ids, 0.15, 0.1, seed=7)
    again = assign_splits(dict(reversed(list(ids.items()))), 0.15, 0.1, seed=7)
    other = assign_splits(ids, 0.15, 0.1, seed=8)
    assert first == again and first != other
    values = list(first.values())
    assert (values.count("val"), values.count("test"), values.count("train")) == (30, 20, 150)


def test_arguments_are_checked(synth_dir, tmp_path):
    with pytest.raises(UsageError, match="--val"):
        prepare_dataset(synth_dir, tmp_path, val=0.6, test=0.5, progress=False)
    with pytest.raises(UsageError, match="no such folder"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out", progress=False)


def test_bad_pairs_are_skipped_and_reported(synth_dir, tmp_path):
    source = tmp_path / "faulty"
    shutil.copytree(synth_dir, source)
    data = (source / "synth_0001.jpg").read_bytes()
    (source / "synth_0001.jpg").write_bytes(data[: len(data) // 2])  # truncated
    Image.fromarray(_disc(5, 7)).save(source / "synth_0002_segmentation.png")  # size mismatch
    (source / "synth_0003_segmentation.png").unlink()  # image without mask
    shutil.copy(source / "synth_0004.jpg", source / "copy_0004.jpg")  # duplicate pixels
    shutil.copy(source / "synth_0004_segmentation.png", source / "copy_0004_segmentation.png")
    Image.new("L", (16, 16)).save(source / "synth_0006_segmentation.png")  # empty (and size)
    mask = np.asarray(Image.open(source / "synth_0005_segmentation.png"))
    Image.fromarray((mask > 127).astype(np.uint8)).save(source / "synth_0005_segmentation.png")
    manifest = prepare_dataset(source, tmp_path / "out", size=SIZE, workers=2, progress=False)
    kinds = {(problem["path"].rsplit("/", 1)[-1], problem["kind"])
             for entry in manifest["skipped"] for problem in entry["problems"]}
    assert kinds == {("synth_0001.jpg", "unreadable"),
                     ("synth_0002_segmentation.png", "size_mismatch"),
                     ("synth_0003.jpg", "missing_mask"),
                     ("synth_0004.jpg", "duplicate_image"),
                     ("synth_0006_segmentation.png", "size_mismatch"),
                     ("synth_0006_segmentation.png", "empty_mask")}
    prepared = {item["id"] for item in manifest["items"]}
    assert prepared == {"copy_0004", "synth_0005"} | {f"synth_{i:04d}" for i in range(7, 13)}
    summary = summary_lines(manifest, tmp_path / "out")
    assert summary[0].startswith("prepared 8 pairs") and "(12 read, 0 reused)" in summary[0]
    assert "skipped 4 pair(s) and 1 unpaired file(s): duplicate_image 1, empty_mask 1, " \
        "missing_mask 1, size_mismatch 2, unreadable 1" in summary
    zero_one = np.load(tmp_path / "out" / "masks" / "synth_0005.npy")  # 0/1 mask accepted
    assert zero_one.max() == 1 and set(np.unique(zero_one)) == {0, 1}
    for folder, suffix in (("images", ".npy"), ("masks", ".npy"), ("meta", ".json")):
        written = {path.stem for path in (tmp_path / "out" / folder).glob(f"*{suffix}")}
        assert written == prepared, folder  # nothing left of the dropped duplicate synth_0004


def test_rerun_is_incremental(synth_dir, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(synth_dir, source)
    out = tmp_path / "out"
    first = prepare_dataset(source, out, size=SIZE, workers=1, progress=False)
    stamp = (out / "images" / "synth_0001.npy").stat().st_mtime_ns
    second = prepare_dataset(source, out, size=SIZE, workers=1, progress=False)
    assert second["run"] == second["run"] | {"decoded": 0, "reused": 12}
    assert second["items"] == first["items"]
    assert (out / "images" / "synth_0001.npy").stat().st_mtime_ns == stamp
    os.utime(source / "synth_0002.jpg", ns=(time.time_ns(), time.time_ns()))
    assert prepare_dataset(source, out, size=SIZE, progress=False)["run"]["decoded"] == 1
    resized = prepare_dataset(source, out, size=SIZE // 2, workers=1, progress=False)
    assert resized["run"]["decoded"] == 12
    assert np.load(out / "images" / "synth_0001.npy").shape == (SIZE // 2, SIZE // 2, 3)


def test_sigkill_leaves_whole_files_and_rerun_completes(synth_dir, tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from dermaseg.data.prepare import prepare_dataset; "
            "prepare_dataset(sys.argv[1], sys.argv[2], size=256, workers=1, progress=False)")
    process = subprocess.Popen([sys.executable, "-c", code, str(synth_dir), str(out)])
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if len(list((out / "meta").glob("*.json"))) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for array in [*out.glob("images/*.npy"), *out.glob("masks/*.npy")]:
        np.load(array)  # every file present is whole
    done = len(list((out / "meta").glob("*.json")))
    manifest = prepare_dataset(synth_dir, out, size=256, workers=1, progress=False)
    assert manifest["run"]["decoded"] == 12 - done and len(manifest["items"]) == 12
    assert not list(out.rglob(".*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["items"] == manifest["items"]


def test_official_split_is_kept(tmp_path):
    root = tmp_path / "ISIC2016"
    image, mask = np.full((40, 60, 3), 120, np.uint8), _disc(40, 60)
    for index in range(10):
        image[0, 0, 0] = index  # distinct pixels: not duplicates
        folder = "ISBI2016_ISIC_Part1_" + ("Test_Data" if index < 3 else "Training_Data")
        _pair(root / folder, f"ISIC_{index:07d}", image, mask)
    manifest = prepare_dataset(root, tmp_path / "out", size=32, val=0.2, test=0.2,
                               progress=False)
    splits = {item["id"]: item["split"] for item in manifest["items"]}
    assert manifest["split"]["official"] and manifest["counts"] == {"train": 6, "val": 1, "test": 3}
    assert all(splits[f"ISIC_{i:07d}"] == "test" for i in range(3))
    shuffled = prepare_dataset(root, tmp_path / "out2", size=32, val=0.2, test=0.2,
                               keep_official_split=False, progress=False)
    assert shuffled["counts"] == {"train": 6, "val": 2, "test": 2}


def test_a_broken_mask_has_the_reason_data_check_gives(synth_dir, tmp_path):
    from dermaseg.data.check import check_dataset

    source = tmp_path / "raw"
    shutil.copytree(synth_dir, source)
    (source / "synth_0007_segmentation.png").write_bytes(b"")
    manifest = prepare_dataset(source, tmp_path / "out", size=SIZE, workers=1, progress=False)
    prepared = {p["path"]: p["detail"] for e in manifest["skipped"] for p in e["problems"]}
    report = check_dataset(source, workers=1, progress=False)
    checked = {str(p.path): p.detail for p in report.problems}
    mask = str(source / "synth_0007_segmentation.png")
    assert prepared[mask] == checked[mask] == "empty file (0 bytes)"


def test_training_folders_alone_are_not_an_official_split(tmp_path):
    root = tmp_path / "ISIC2018"
    image, mask = np.full((40, 60, 3), 120, np.uint8), _disc(40, 60)
    for index in range(10):
        image[0, 0, 0] = index
        _pair(root / "ISIC2018_Task1-2_Training_Input", f"ISIC_{index:07d}", image, mask)
    manifest = prepare_dataset(root, tmp_path / "out", size=32, val=0.2, test=0.2,
                               progress=False)
    assert not manifest["split"]["official"]
    assert manifest["counts"] == {"train": 6, "val": 2, "test": 2}
    assert "split (seed 42): train 6, val 2, test 2" in summary_lines(manifest, tmp_path / "out")


def test_longest_file_names_are_prepared(tmp_path):
    stem = "lesion_" + "x" * 231  # 238 bytes: NAME_segmentation.png is 255, the most allowed
    _pair(tmp_path / "src", stem, np.full((40, 60, 3), 120, np.uint8), _disc(40, 60))
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / ".dermaseg-k1ll3d.tmp").write_bytes(b"left by a killed run")
    manifest = prepare_dataset(tmp_path / "src", out, size=32, progress=False)
    assert [item["id"] for item in manifest["items"]] == [stem]
    assert np.load(out / "images" / f"{stem}.npy").shape == (32, 32, 3)
    assert (out / "meta" / f"{stem}.json").is_file() and not list(out.rglob(".*.tmp"))


def test_big_jpeg_uses_draft_and_exif_orientation(tmp_path):
    width, height = 4000, 3000
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, : width // 2] = (220, 30, 30)  # left half red, right half blue
    picture[:, width // 2 :] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 3000 wide, 4000 high
    Image.fromarray(picture).save(tmp_path / "big.jpg", quality=90, exif=exif)
    Image.fromarray(_disc(width, height)).save(tmp_path / "big_segmentation.png")
    decoded, original = decode_image(tmp_path / "big.jpg", 128)
    assert original == (height, width) and decoded.size[0] < height // 4
    assert decoded.size[1] >= 128
    manifest = prepare_dataset(tmp_path, tmp_path / "out", size=128, progress=False)
    item = manifest["items"][0]
    assert (item["orig_height"], item["orig_width"]) == (width, height)
    prepared = np.load(tmp_path / "out" / item["image"]).astype(int)
    top, bottom = prepared[10, 64], prepared[-10, 64]
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red rotated to the top


def test_cli_prepare(synth_dir, tmp_path):
    command = [sys.executable, "-m", "dermaseg", "data", "prepare", str(synth_dir),
               "-o", str(tmp_path / "out"), "--size", "32", "--workers", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prepared 12 pairs" in result.stdout and "train" in result.stdout
    assert (tmp_path / "out" / "manifest.json").is_file()
    result = subprocess.run(command[:5] + [str(tmp_path / "none"), "-o", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no such folder" in result.stderr
