"""Tiny files declaring huge images are refused before decoding (issue 18, item 7): a 69-byte
PNG declaring 1 x 40,000,000 pixels was decoded as a black image. The service's side is in
test_connections.py."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from dermaseg.errors import DermasegError
from dermaseg.fileio import read_rgb
from dermaseg.image_checks import ImageRefused
from helpers.badinputs import png_bomb, run_cli, short_scan_jpeg

CASES = {
    "aspect.png": (png_bomb(1, 40_000_000), "one side is over 50 times the other"),
    "short.png": (png_bomb(3000, 3000), "truncated or damaged image data"),
    "short-scan.jpg": (short_scan_jpeg(), "truncated or damaged image data"),
}


def test_truncated_images_stay_an_error():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("name", CASES)
def test_crafted_images_are_refused_before_decoding_naming_the_file(name):
    data, message = CASES[name]
    with pytest.raises(ImageRefused) as error:
        read_rgb(data, name)
    assert str(error.value).startswith(f"{name}: ") and message in str(error.value)


@pytest.mark.parametrize("shape,mode,options", [
    ((4000, 3000), "L", {"format": "PNG", "optimize": True}),  # an empty mask: ~1000:1
    ((600, 800), "1", {"format": "PNG"}),
    ((333, 517), "RGB", {"format": "PNG", "interlace": 1}),
    ((40, 2000), "RGB", {"format": "PNG"}),  # 1:50 is still allowed
    ((4000, 3000), "RGB", {"format": "JPEG", "quality": 1, "optimize": True}),
    ((4000, 3000), "L", {"format": "JPEG", "quality": 1, "progressive": True}),
    ((3000, 4000), "RGB", {"format": "WEBP", "lossless": True}),  # 12 Mpx in ~500 bytes
])
def test_uniform_images_that_compress_extremely_well_are_still_read(shape, mode, options):
    image = Image.fromarray(np.zeros(shape, np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, **options)
    assert read_rgb(buffer.getvalue(), "x").shape == (*shape, 3)


def test_a_png_whose_stream_ends_early_is_refused():
    """The stream is complete and valid, but holds 10 of the 600 rows its header declares."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = zlib.compress(b"\0" * 601 * 10)
    header = struct.pack(">IIBBBBB", 600, 600, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
            + chunk(b"IEND", b""))
    with pytest.raises(DermasegError, match="need 360600 bytes of rows"):
        read_rgb(data, "ten-rows.png")


def test_predict_and_data_check_refuse_them_by_name(synth_dir, tiny_ckpt, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(synth_dir / "synth_0001.jpg", raw / "good.jpg")
    shutil.copy(synth_dir / "synth_0001_segmentation.png", raw / "good_segmentation.png")
    for name, (data, _) in CASES.items():
        (raw / name).write_bytes(data)
        shutil.copy(synth_dir / "synth_0001_segmentation.png",
                    raw / f"{name.rsplit('.', 1)[0]}_segmentation.png")
    out = tmp_path / "masks"
    code, output = run_cli("predict", tiny_ckpt, raw, "-o", out, "--quiet")
    assert code == 1 and "Traceback" not in output, output
    for name, (_, message) in CASES.items():
        assert f"{name}: " in output and message in output, output
    assert sorted(p.name for p in out.glob("*.png")) == ["good_segmentation.png"]
    code, output = run_cli("data", "check", raw)
    assert code == 1 and output.count("unreadable") >= len(CASES), output
    assert "one side is over 50 times the other" in output and "truncated" in output, output
