"""`data check`: every planted fault reported by kind and file name; bad inputs never crash."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from dermaseg.cli import app
from dermaseg.data.check import check_dataset, check_pair
from dermaseg.data.discover import Pair


def _mask_path(image: Path) -> Path:
    return image.with_name(image.stem + "_segmentation.png")


def _edit_mask(image: Path, change) -> None:
    mask = Image.open(_mask_path(image))
    mask.load()
    change(mask).save(_mask_path(image))


def plant_faults(folder: Path) -> dict[str, str]:
    """Plant one fault of each kind in a flat folder of >= 12 `NAME.jpg` pairs.

    Returns:
        {label: file name expected in the report}; the label starts with the problem kind.
    """
    images = sorted(folder.glob("*.jpg"))[:12]
    planted = {}
    _mask_path(images[0]).unlink()
    planted["missing_mask"] = images[0].name
    images[1].unlink()
    planted["orphan_mask"] = _mask_path(images[1]).name
    data = images[2].read_bytes()
    images[2].write_bytes(data[: len(data) // 2])
    planted["unreadable truncated"] = images[2].name
    _mask_path(images[3]).write_bytes(b"")
    planted["unreadable zero-byte"] = _mask_path(images[3]).name
    images[4].write_text("this is not a JPEG\n")
    planted["unreadable text"] = images[4].name
    _edit_mask(images[5], lambda m: m.resize((m.width + 7, m.height), Image.NEAREST))
    planted["size_mismatch"] = _mask_path(images[5]).name
    _edit_mask(images[6], lambda m: m.convert("RGB"))
    planted["mask_not_single_channel"] = _mask_path(images[6]).name
    _edit_mask(images[7], lambda m: m.point(lambda v: v // 255))
    planted["mask_values_0_1"] = _mask_path(images[7]).name
    _edit_mask(images[8], lambda m: m.filter(ImageFilter.GaussianBlur(8)))
    planted["mask_not_binary"] = _mask_path(images[8]).name
    _edit_mask(images[9], lambda m: m.point(lambda v: 0))
    planted["empty_mask"] = _mask_path(images[9]).name
    _edit_mask(images[10], lambda m: m.point(lambda v: 255))
    planted["full_mask"] = _mask_path(images[10]).name
    copy = folder / "zz copy.jpg"
    shutil.copy(images[11], copy)
    shutil.copy(_mask_path(images[11]), _mask_path(copy))
    planted["duplicate_image"] = copy.name
    return planted


def test_every_planted_fault_reported(tmp_path, synth_dir):
    folder = tmp_path / "faulty"
    shutil.copytree(synth_dir, folder)
    planted = plant_faults(folder)
    report = check_dataset(folder, workers=2, progress=False)
    found = {(p.kind, p.path.name) for p in report.problems}
    expected = {(label.split()[0], name) for label, name in planted.items()}
    assert found == expected, report.format_table()
    assert len(report.problems) == len(planted)
    assert report.pairs == 11  # 12 - the image without mask - the orphan mask + the copy
    assert len(report.good) == 1
    table = report.format_table()
    for name in planted.values():
        assert name in table


def test_cli_exit_codes_and_json(tmp_path, synth_dir):
    runner = CliRunner()
    clean = runner.invoke(app, ["data", "check", str(synth_dir), "--workers", "1"])
    assert clean.exit_code == 0, clean.output
    assert "12 pairs checked" in clean.output and "no problem found" in clean.output
    folder = tmp_path / "faulty"
    shutil.copytree(synth_dir, folder)
    planted = plant_faults(folder)
    result = runner.invoke(app, ["data", "check", str(folder), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["pairs"] == 11 and report["ok"] is False
    assert report["counts"]["unreadable"] == 3
    assert {Path(p["path"]).name for p in report["problems"]} == set(planted.values())
    missing = subprocess.run(
        [sys.executable, "-m", "dermaseg", "data", "check", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert "absent: no such folder" in missing.stderr and "Traceback" not in missing.stderr


def test_empty_folder_reports_no_pairs(tmp_path):
    report = check_dataset(tmp_path, workers=1, progress=False)
    assert [p.kind for p in report.problems] == ["no_pairs"]
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1 and "no_pairs" in result.output


def _png_claiming_size(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (a decompression bomb's signature)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))


def _pair(folder: Path, name: str, image: Image.Image, mask: Image.Image, fmt="PNG", **kw):
    image.save(folder / f"{name}.{fmt.lower()}", format=fmt, **kw)
    mask.save(folder / f"{name}_segmentation.png")
    return Pair(name, folder / f"{name}.{fmt.lower()}", folder / f"{name}_segmentation.png")


def _kinds(pair: Pair) -> list[str]:
    return [p.kind for p in check_pair(pair)]


def test_converted_inputs_are_not_problems(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    lesion = np.zeros((40, 60), np.uint8)
    lesion[10:30, 20:40] = 255
    mask = Image.fromarray(lesion)
    assert _kinds(_pair(tmp_path, "cmyk", rgb.convert("CMYK"), mask, fmt="JPEG")) == []
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    assert _kinds(_pair(tmp_path, "sixteen", grey16, mask)) == []
    assert _kinds(_pair(tmp_path, "grey", rgb.convert("L"), mask)) == []
    assert _kinds(_pair(tmp_path, "rgba", rgb.convert("RGBA"), mask)) == []
    assert _kinds(_pair(tmp_path, "palette", rgb.convert("P"), mask.convert("P"))) == []
    mask16 = Image.fromarray(lesion.astype(np.uint16) * 257)
    assert _kinds(_pair(tmp_path, "mask16", rgb, mask16)) == []
    assert _kinds(_pair(tmp_path, "bilevel", rgb, mask.convert("1"))) == []


def test_exif_rotation_compared_as_displayed(tmp_path):
    raw = Image.new("RGB", (60, 40), (200, 150, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 40 x 60
    tall = Image.new("L", (40, 60))
    tall.paste(255, (10, 10, 30, 30))
    wide = Image.new("L", (60, 40))
    wide.paste(255, (10, 10, 30, 30))
    assert _kinds(_pair(tmp_path, "rotated", raw, tall, fmt="JPEG", exif=exif)) == []
    problems = check_pair(_pair(tmp_path, "rotated2", raw, wide, fmt="JPEG", exif=exif))
    assert [(p.kind, p.detail) for p in problems] == [(
        "size_mismatch", "mask is 60x40, image is 40x60 (turned: the image as displayed, after "
        "its EXIF orientation; the mask must match that)")]


def test_odd_files_reported_not_raised(tmp_path):
    mask = Image.new("L", (1, 1), 255)
    assert _kinds(_pair(tmp_path, "tiny", Image.new("RGB", (1, 1)), mask)) == ["full_mask"]
    _png_claiming_size(tmp_path / "bomb.png", 20000, 20000)
    Image.new("L", (4, 4), 255).save(tmp_path / "bomb_segmentation.png")
    problems = check_pair(Pair("bomb", tmp_path / "bomb.png", tmp_path / "bomb_segmentation.png"))
    assert [p.kind for p in problems] == ["unreadable"] and "too large" in problems[0].detail
    rgba_mask = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    problems = check_pair(_pair(tmp_path, "rgbamask", Image.new("RGB", (4, 4)), rgba_mask))
    detail = next(p.detail for p in problems if p.kind == "mask_not_single_channel")
    assert detail == ("RGBA mask with transparency (channels equal): save it as 8-bit "
                      "greyscale (mode L), 0 and 255")
    gone = Pair("gone", tmp_path / "gone.jpg", tmp_path / "gone_segmentation.png")
    assert _kinds(gone) == ["unreadable", "unreadable"]


def test_odd_names_and_loops_through_cli(tmp_path, synth_dir):
    folder = tmp_path / "odd names"
    folder.mkdir()
    image = sorted(synth_dir.glob("*.jpg"))[0]
    odd = os.fsdecode(b"caf\xe9 lesion")
    shutil.copy(image, folder / f"{odd}.jpg")
    shutil.copy(_mask_path(image), folder / f"{odd}_segmentation.png")
    shutil.copy(_mask_path(image), folder / f"{odd}2_segmentation.png")
    os.symlink("..", folder / "loop")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--workers", "1"])
    assert result.exit_code == 1
    assert "1 pairs checked" in result.output
    assert "orphan_mask" in result.output and "caf\\xe9 lesion2_segmentation.png" in result.output


def test_corrupted_bytes_never_raise(tmp_path, synth_dir):
    rng = np.random.default_rng(0)
    image = sorted(synth_dir.glob("*.jpg"))[0]
    sources = {".jpg": image.read_bytes(), ".png": _mask_path(image).read_bytes()}
    for number in range(40):
        suffix = ".jpg" if number % 2 else ".png"
        data = np.frombuffer(sources[suffix], dtype=np.uint8).copy()
        spots = rng.integers(0, len(data), 1 + number % 6)
        data[spots] = rng.integers(0, 256, len(spots), dtype=np.uint8)
        if number % 5 == 0:
            data = data[: rng.integers(1, len(data))]
        target = tmp_path / f"c{number}{suffix}"
        target.write_bytes(data.tobytes())
        mask = _mask_path(image) if suffix == ".jpg" else target
        problems = check_pair(Pair(f"c{number}", image if suffix == ".png" else target, mask))
        assert all(
            p.kind
            in {
                "unreadable",
                "size_mismatch",
                "mask_not_binary",
                "mask_not_single_channel",
                "empty_mask",
                "full_mask",
            }
            for p in problems
        )
