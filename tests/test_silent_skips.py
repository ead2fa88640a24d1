"""Silent skips and mismatched messages (issue 18, item 10): `predict` skipped the images of a
symlinked sub-folder that `data prepare` and `evaluate` read; `export -o model.txt` wrote an
ONNX file no command recognises; INT8 calibration skipped unreadable files without naming
them; a multi-page TIFF or an animated image silently used its first frame; `data check` and
`evaluate` quoted different pixel limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.fileio import MAX_PIXELS
from helpers.badinputs import png_bomb, run_cli


def _pairs(synth_dir: Path, folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(synth_dir / f"{name}.jpg", folder)
        shutil.copy(synth_dir / f"{name}_segmentation.png", folder)


def test_predict_reads_a_symlinked_sub_folder_like_prepare_and_evaluate(
        tmp_path, synth_dir, tiny_ckpt):
    raw = tmp_path / "raw"
    _pairs(synth_dir, raw, ["synth_0001", "synth_0002"])
    _pairs(synth_dir, tmp_path / "elsewhere", ["synth_0003", "synth_0004"])
    (raw / "linked").symlink_to(tmp_path / "elsewhere")
    code, output = run_cli("data", "prepare", raw, "-o", tmp_path / "prep", "--size", "32",
                           "-j", "1")
    assert code == 0 and "prepared 4 pairs" in output, output
    code, output = run_cli("evaluate", tiny_ckpt, "--data", raw, "-o", tmp_path / "e", "-q")
    assert code == 0 and "4 images" in output, output
    code, output = run_cli("predict", tiny_ckpt, raw, "-o", tmp_path / "masks", "--quiet")
    assert code == 0 and "4 written" in output, output
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == [
        f"synth_000{i}_segmentation.png" for i in range(1, 5)]


@pytest.mark.parametrize("name", ["model.txt", "model", "model.onnx.bak", "model.ONNX2"])
def test_export_refuses_a_name_no_command_reads_as_a_model(tmp_path, tiny_ckpt, name):
    code, output = run_cli("export", tiny_ckpt, "-o", tmp_path / name)
    assert code == 2 and f"-o {tmp_path / name}: an ONNX export is named *.onnx" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_calibration_names_the_files_it_cannot_read(tmp_path, synth_dir, tiny_ckpt):
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(synth_dir / "synth_0001.jpg", calib)
    (calib / "broken.jpg").write_bytes(b"not a JPEG at all")
    (calib / "cut.png").write_bytes((synth_dir / "synth_0001_segmentation.png").read_bytes()[:80])
    code, output = run_cli("export", tiny_ckpt, "--int8", "--calib", calib, "-o",
                           tmp_path / "q.int8.onnx")
    assert code == 2 and "needs at least 2 readable images, found 1" in output, output
    assert f"not used: {calib / 'broken.jpg'}: not an image" in output, output
    assert f"not used: {calib / 'cut.png'}:" in output, output


def _frames(path: Path, image: np.ndarray, **options) -> Path:
    first = Image.fromarray(image)
    second = Image.fromarray(255 - image)
    first.save(path, save_all=True, append_images=[second], **options)
    return path


def test_a_multi_frame_image_or_mask_is_noted_with_its_name(tmp_path, synth_dir, tiny_ckpt):
    raw = tmp_path / "raw"
    raw.mkdir()
    image = np.asarray(Image.open(synth_dir / "synth_0001.jpg").convert("RGB"))
    mask = np.asarray(Image.open(synth_dir / "synth_0001_segmentation.png"))
    pages = _frames(raw / "pages.tiff", image)
    animated = _frames(raw / "pages_segmentation.png", mask)  # an animated PNG
    code, output = run_cli("predict", tiny_ckpt, pages, "-o", tmp_path / "m", "--quiet")
    assert code == 0 and f"note: {pages}: several frames" in output, output
    assert "only the first is used" in output
    code, output = run_cli("data", "check", raw)
    assert f"note: {pages}: several frames" in output, output
    assert f"note: {animated}: several frames" in output, output
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(animated, truth)
    code, output = run_cli("evaluate", "--pred", tmp_path / "m", "--truth", truth, "-o",
                           tmp_path / "e", "--quiet")
    assert f"note: {truth / animated.name}: several frames" in output, output


def test_check_and_evaluate_quote_the_same_pixel_limit(tmp_path, synth_dir):
    raw = tmp_path / "raw"
    _pairs(synth_dir, raw, ["synth_0001"])
    (raw / "synth_0001_segmentation.png").write_bytes(png_bomb(20000, 20000))
    limit = f"image too large (over the limit of {MAX_PIXELS} pixels)"
    code, output = run_cli("data", "check", raw)
    assert code == 1 and limit in output, output
    assert str(2 * MAX_PIXELS) not in output  # Pillow's own limit is twice ours
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(synth_dir / "synth_0001_segmentation.png", pred)
    code, output = run_cli("evaluate", "--pred", pred, "--truth", raw, "-o", tmp_path / "e")
    assert code == 1 and limit in output and "Traceback" not in output, output
