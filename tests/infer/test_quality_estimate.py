"""The quality estimate end to end: `dermaseg calibrate` stores it in the model, and the
checkpoint, its ONNX export, `predict`, `evaluate` and the service give the same estimate for
the same image."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from dermaseg.checkpoint import load_model
from dermaseg.export.onnx import export_onnx
from dermaseg.fileio import read_rgb_reduced
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.segment import Decoded, SegmentOptions, segment
from dermaseg.model_meta import ModelMeta
from helpers.fitted import shared_fitted
from helpers.serving import Server


def dermaseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermaseg", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, synth_dir):
    """The fitted test model, its estimate fitted on the 12 synthetic pairs, and its ONNX."""
    folder = tmp_path_factory.mktemp("quality")
    checkpoint = shutil.copy(shared_fitted(), folder / "fit.ckpt")
    done = dermaseg("calibrate", str(checkpoint), "--data", str(synth_dir), "-q")
    assert done.returncode == 0, done.stderr
    assert "quality estimate fitted on 12 images (96 with degraded copies)" in done.stdout
    model, meta = load_model(checkpoint)
    onnx_path = export_onnx(model, meta, folder / "fit.onnx", exporter="legacy")
    return checkpoint, onnx_path, folder


def estimate(model, image: np.ndarray | Path) -> dict:
    """The estimate of `image` (an array, or a file decoded as predict and serve decode it)."""
    predictor = Predictor.load(model)
    if isinstance(image, Path):
        reduced, original = read_rgb_reduced(image, predictor.meta.image_size)
        decoded = Decoded(reduced, original, lambda: reduced)
    else:
        decoded = Decoded(image, image.shape[:2], lambda: image)
    (result,) = segment(predictor, [decoded], SegmentOptions())
    return result.quality.to_dict()


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_image(synth_dir, name="synth_0003.jpg") -> np.ndarray:
    return np.asarray(Image.open(synth_dir / name).convert("RGB"))


def test_calibrate_stores_the_estimator_with_what_it_was_fitted_on(calibrated):
    checkpoint, onnx_path, _ = calibrated
    _, meta = load_model(checkpoint)
    assert meta.quality is not None and meta.quality.views is not None
    fitted = meta.quality.fitted_on
    assert fitted["images"] == 12 and fitted["samples"] == 96 and "blur" in fitted["degradations"]
    exported = Predictor.load(onnx_path).meta.quality
    assert exported == meta.quality


def test_checkpoint_onnx_and_service_give_the_same_estimate(calibrated, synth_dir):
    checkpoint, onnx_path, folder = calibrated
    image = read_image(synth_dir)
    from_checkpoint, from_onnx = estimate(checkpoint, image), estimate(onnx_path, image)
    assert from_checkpoint["estimate"] == "one pass"
    assert from_checkpoint["estimated_jaccard"] is not None
    assert from_onnx["estimated_jaccard"] == pytest.approx(
        from_checkpoint["estimated_jaccard"], abs=2e-3)
    assert from_onnx["review"] == from_checkpoint["review"]
    server = Server(onnx_path, folder / "serve.log").wait_ready()
    try:
        data = (synth_dir / "synth_0003.jpg").read_bytes()
        response = httpx.post(f"{server.url}/v1/segment", files={"file": ("a.jpg", data)},
                              timeout=60)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    served = response.json()["quality"]
    decoded_as_served = estimate(onnx_path, synth_dir / "synth_0003.jpg")
    assert served["estimated_jaccard"] == pytest.approx(decoded_as_served["estimated_jaccard"],
                                                        abs=1e-4)
    band = served["uncertain_band"]
    assert set(band) == {"outer", "inner"} and all(isinstance(p, list) for p in band.values())


def test_a_blurred_image_gets_a_lower_estimate(calibrated, synth_dir):
    checkpoint, _, _ = calibrated
    image = read_image(synth_dir, "synth_0001.jpg")
    radius = 0.1 * max(image.shape)  # the lesion's border washed out
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    sharp_estimate = estimate(checkpoint, image)["estimated_jaccard"]
    blurred_quality = estimate(checkpoint, blurred)
    assert blurred_quality["estimated_jaccard"] < sharp_estimate - 0.2
    assert blurred_quality["review"]
    assert any(reason.startswith("estimated Jaccard") for reason in blurred_quality["reasons"])


def test_tta_uses_the_views_estimate(calibrated, synth_dir):
    from dermaseg.infer.tta import TTAConfig

    checkpoint, _, _ = calibrated
    image = read_image(synth_dir)
    predictor = Predictor.load(checkpoint, tta=TTAConfig())
    (result,) = segment(predictor, [Decoded(image, image.shape[:2], lambda: image)],
                        SegmentOptions())
    assert result.quality.estimate == "views" and "view_spread" in result.quality.signals


def test_predict_writes_the_estimate_and_the_uncertainty_map(calibrated, synth_dir, tmp_path):
    checkpoint, _, _ = calibrated
    images = [str(synth_dir / f"synth_000{k}.jpg") for k in range(1, 5)]
    done = dermaseg("predict", str(checkpoint), *images, "-o", str(tmp_path / "out"),
                    "--save-uncertainty", "-q")
    assert done.returncode == 0, done.stderr
    assert "review recommended:" in done.stdout
    rows = read_csv(tmp_path / "out" / "quality.csv")
    assert [row["id"] for row in rows] == [f"synth_000{k}" for k in range(1, 5)]
    first = json.loads((tmp_path / "out" / "quality" / "synth_0001.json").read_text())
    image = read_image(synth_dir, "synth_0001.jpg")
    assert first["estimated_jaccard"] == pytest.approx(
        estimate(checkpoint, synth_dir / "synth_0001.jpg")["estimated_jaccard"], abs=1e-4)
    uncertainty = np.asarray(Image.open(tmp_path / "out" / "synth_0001_uncertainty.png"))
    assert uncertainty.dtype == np.uint8 and uncertainty.shape == image.shape[:2]
    assert uncertainty.max() > 200 and (uncertainty < 30).mean() > 0.5


def test_evaluate_judges_the_estimate_and_lists_failures_first(calibrated, synth_dir,
                                                               tmp_path):
    checkpoint, _, _ = calibrated
    done = dermaseg("evaluate", str(checkpoint), "--data", str(synth_dir), "-o",
                    str(tmp_path / "eval"), "-q")
    assert done.returncode == 0, done.stderr
    assert "failures (Jaccard < 0.65):" in done.stdout and "quality estimate:" in done.stdout
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    jaccards = {i: v["jaccard"] for i, v in summary["per_image"].items()}
    assert summary["failures"]["ids"] == sorted((i for i, j in jaccards.items() if j < 0.65),
                                                key=jaccards.get)
    stats = summary["quality"]
    assert stats["images"] == 12 and stats["estimate"]["kind"] == "one pass"
    assert 0 <= stats["estimate"]["mean_absolute_error"] <= 1
    report = (tmp_path / "eval" / "report.md").read_text()
    assert report.index("## Failures:") < report.index("## Quality estimate") < report.index(
        "| metric | mean |")
    assert (tmp_path / "eval" / "quality.png").is_file()
    rows = read_csv(tmp_path / "eval" / "metrics.csv")
    assert {"estimated_jaccard", "review"} <= set(rows[0])


def test_calibrate_refuses_a_tflite_model_and_too_few_images(calibrated, tmp_path, synth_dir):
    _, onnx_path, _ = calibrated
    few = tmp_path / "few"
    few.mkdir()
    for name in ("synth_0001.jpg", "synth_0001_segmentation.png"):
        shutil.copy(synth_dir / name, few / name)
    done = dermaseg("calibrate", str(onnx_path), "--data", str(few), "-q")
    assert done.returncode != 0 and "needs at least 5" in done.stderr
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"not used")
    done = dermaseg("calibrate", str(tflite), "--data", str(synth_dir), "-q")
    assert done.returncode != 0 and "calibrate a checkpoint (.ckpt) or an ONNX" in done.stderr
    assert ModelMeta.from_dict(ModelMeta.from_dict(
        Predictor.load(onnx_path).meta.to_dict(), "x").to_dict(), "y").quality is not None
