"""Synthetic dermoscopy generator: deterministic, binary masks matching a darker lesion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from dermaseg.cli import app
from dermaseg.data.check import check_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset, synth_pair
from dermaseg.errors import UsageError
from helpers.badinputs import run_cli


def _pairs(folder):
    images = sorted(p for p in folder.glob("*.jpg"))
    return [(p, p.with_name(p.stem + "_segmentation.png")) for p in images]


def test_layout_and_binary_masks(synth_dir):
    pairs = _pairs(synth_dir)
    assert len(pairs) == 12
    assert pairs[0][0].name == "synth_0001.jpg"
    sizes = set()
    for image_path, mask_path in pairs:
        image, mask = Image.open(image_path), Image.open(mask_path)
        assert image.mode == "RGB" and mask.mode == "L"
        assert image.size == mask.size
        assert 120 <= max(image.size) <= 200
        sizes.add(image.size)
        values = np.unique(np.asarray(mask))
        assert set(values.tolist()) == {0, 255}
        assert 0.02 < (np.asarray(mask) == 255).mean() < 0.8
    assert len(sizes) > 6  # varied sizes and aspect ratios


def test_checks_clean(synth_dir):
    report = check_dataset(synth_dir, workers=1, progress=False)
    assert report.pairs == 12 and report.ok, report.format_table()


def test_lesion_darker_than_surrounding_skin(synth_dir):
    for image_path, mask_path in _pairs(synth_dir):
        grey = np.asarray(Image.open(image_path).convert("L"), dtype=np.float64)
        lesion = np.asarray(Image.open(mask_path)) == 255
        ring = ndimage.binary_dilation(lesion, iterations=12) & ~ndimage.binary_dilation(
            lesion, iterations=4
        )
        assert grey[ring].mean() - grey[lesion].mean() > 25, image_path.name


def test_deterministic_and_independent_of_n(tmp_path):
    options = SynthOptions(min_side=64, max_side=96)
    synth_dataset(3, tmp_path / "a", seed=7, options=options, progress=False)
    synth_dataset(4, tmp_path / "b", seed=7, options=options, progress=False)
    synth_dataset(3, tmp_path / "c", seed=8, options=options, progress=False)
    for name in ("synth_0001.jpg", "synth_0003_segmentation.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_mask_matches_drawn_lesion_when_upscaled():
    rng = np.random.default_rng(3)
    image, mask = synth_pair(rng, 1200, 900, SynthOptions(hair_p=0, bubble_p=0, ruler_p=0))
    assert image.shape == (900, 1200, 3) and mask.shape == (900, 1200)
    grey = image.mean(axis=2)
    inner = ndimage.binary_erosion(mask == 255, iterations=15)
    ring = ndimage.binary_dilation(mask == 255, iterations=40) & ~ndimage.binary_dilation(
        mask == 255, iterations=15
    )
    assert grey[ring].mean() - grey[inner].mean() > 30


def test_artefacts_drawn_when_asked():
    options = SynthOptions(hair_p=1.0, bubble_p=0, ruler_p=0, vignette_p=0)
    plain = SynthOptions(hair_p=0, bubble_p=0, ruler_p=0, vignette_p=0)
    hairy, _ = synth_pair(np.random.default_rng(5), 200, 200, options)
    clean, _ = synth_pair(np.random.default_rng(5), 200, 200, plain)
    assert (hairy.mean(axis=2) < 70).sum() > (clean.mean(axis=2) < 70).sum() + 50


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError):
        synth_dataset(0, tmp_path)
    with pytest.raises(UsageError):
        synth_dataset(1, tmp_path, options=SynthOptions(size=(8, 8)))


@pytest.mark.parametrize(("options", "message"), [
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--size", "100000x16"], "--size 100000x16: each side 16..65500"),
    (["--size", "20000x20000"], "at most 100 Mpx"),
    (["--max-side", "70000"], "--max-side <= 65500"),
])
def test_out_of_range_values_are_refused_before_writing(tmp_path, options, message):
    """--seed -1 and a side over JPEG's limit crashed with a traceback, leaving an empty
    folder; a fixed --size no longer trips over the default --min-side/--max-side."""
    code, output = run_cli("data", "synth", "-n", "1", "-o", tmp_path / "s", *options)
    assert code == 2 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "s").exists()
    code, output = run_cli("data", "synth", "-n", "1", "-o", tmp_path / "ok", "--size", "64x48",
                           "--max-side", "100")  # the sides are not drawn: not checked
    assert code == 0, output


def test_cli(tmp_path):
    result = CliRunner().invoke(
        app, ["data", "synth", "-n", "2", "-o", str(tmp_path), "--seed", "1", "--size", "90x60"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 2 pairs to {tmp_path}" in result.output
    assert Image.open(tmp_path / "synth_0002.jpg").size == (90, 60)
    one = CliRunner().invoke(app, ["data", "synth", "-n", "1", "-o", str(tmp_path / "one")])
    assert "wrote 1 pair to" in one.output, one.output
    bad = CliRunner().invoke(app, ["data", "synth", "-n", "2", "-o", str(tmp_path), "--size", "9"])
    assert isinstance(bad.exception, UsageError)


def test_cli_into_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "af"
    blocker.write_text("")
    code, output = run_cli("data", "synth", "-n", "1", "-o", blocker)
    assert code == 1 and "af: not a folder" in output and "Traceback" not in output, output
    assert blocker.read_text() == ""
