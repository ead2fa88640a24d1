"""A `.tflite` export used like any model: predict, evaluate and serve run it through LiteRT's
interpreter and agree with the checkpoint it came from. The conversion needs litert-torch
(`make test-tflite` runs these in .venv-tflite); the refusals run everywhere. An export of a
calibrated checkpoint carries its quality estimate and gives the same estimate as the checkpoint
(`tests/infer/test_quality_estimate.py` does the same for ONNX and the service)."""

from __future__ import annotations

import importlib.util
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from dermaseg.config import Config
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import read_rgb_reduced
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.segment import Decoded, SegmentOptions, segment
from dermaseg.infer.tta import TTAConfig
from dermaseg.model_meta import ModelMeta
from helpers.badinputs import run_cli
from helpers.fitted import calibrated_copy, shared_fitted, synth_images
from helpers.serving import Server

HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None


@pytest.fixture(scope="module")
def tflite_pair(tmp_path_factory):
    """(checkpoint, its .tflite export) of the shared fitted model."""
    pytest.importorskip("litert_torch", reason="extra dermaseg[tflite] (litert-torch) missing")
    from dermaseg.checkpoint import load_model
    from dermaseg.export.parity import parity_batches
    from dermaseg.export.tflite import export_tflite

    checkpoint = shared_fitted()
    model, meta = load_model(checkpoint)
    path = tmp_path_factory.mktemp("tflite") / "fit.tflite"
    images = [image for image, _ in synth_images(2, seed=3)]
    export_tflite(model, meta, path, parity_batches(images, meta)[0])
    return checkpoint, path


def test_tflite_model_predicts_like_its_checkpoint(tflite_pair):
    checkpoint, path = tflite_pair
    images = [image for image, _ in synth_images(3, seed=11, width=117, height=83)]
    for tta in (None, TTAConfig(flips=("none", "h", "v"))):
        ours = Predictor.load(path, tta=tta, batch_size=2).predict_proba(images)
        theirs = Predictor.load(checkpoint, tta=tta, batch_size=2).predict_proba(images)
        for mine, reference in zip(ours, theirs, strict=True):
            assert mine.shape == reference.shape
            np.testing.assert_allclose(mine, reference, atol=1e-4)
    with pytest.raises(UsageError, match="fixed input size"):
        Predictor.load(path, tta=TTAConfig(scales=(0.75, 1.0)))


def test_tflite_model_in_predict_evaluate_and_serve(tflite_pair, synth_dir, tmp_path):
    _, path = tflite_pair
    code, output = run_cli("predict", path, synth_dir, "-o", tmp_path / "pred", "-q")
    assert code == 0, output
    assert len(list((tmp_path / "pred").glob("*_segmentation.png"))) == 12
    code, output = run_cli("evaluate", path, "--data", synth_dir, "-o", tmp_path / "eval")
    assert code == 0, output
    dice = json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]["dice"]
    assert dice > 0.5  # a fitted model on its kind of images, not noise
    server = Server(path, tmp_path / "server.log").wait_ready()
    try:
        assert httpx.get(f"{server.url}/readyz").json()["model"]["backend"] == "tflite"
        with open(synth_dir / "synth_0002.jpg", "rb") as handle:
            reply = httpx.post(f"{server.url}/v1/segment", files={"file": handle}, timeout=60)
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text


def test_tflite_metadata_of_another_size_is_refused(tflite_pair, tmp_path):
    _, path = tflite_pair
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(path.read_bytes())
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    meta["image_size"] += 32
    copy.with_name(copy.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(DermasegError, match="metadata says"):
        Predictor.load(copy)


def test_tflite_refusals_name_the_file(synth_dir, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(DermasegError, match=r"no m\.tflite\.json beside it"):
        Predictor.load(model)
    model.with_name("m.tflite.json").write_text("{not json")
    with pytest.raises(DermasegError, match="not a readable JSON"):
        Predictor.load(model)
    model.with_name("m.tflite.json").write_text(json.dumps(
        ModelMeta.from_config(Config()).to_dict()))
    expected = "not a readable TFLite model" if HAS_LITERT else "pip install ai-edge-litert"
    with pytest.raises(DermasegError, match=expected):
        Predictor.load(model)
    with pytest.raises(UsageError, match="--device cuda"):
        Predictor.load(model, device="cuda")
    code, output = run_cli("predict", model, synth_dir, "-o", tmp_path / "out")
    assert code == 1 and "m.tflite" in output and "Traceback" not in output


def test_tflite_metadata_of_another_file_is_refused(tflite_pair, tmp_path):
    _, path = tflite_pair
    other = tmp_path / "other.tflite"
    other.write_bytes(path.read_bytes() + b"\0")  # another file, same metadata copied beside
    other.with_name("other.tflite.json").write_text(
        path.with_name(path.name + ".json").read_text())
    with pytest.raises(DermasegError, match="written for another .tflite file"):
        Predictor.load(other)


@pytest.fixture(scope="module")
def calibrated_tflite(tmp_path_factory, synth_dir):
    """(a copy of the shared fitted checkpoint with its quality estimate fitted on the 12
    synthetic pairs, as `dermaseg calibrate` does, and its .tflite export)."""
    pytest.importorskip("litert_torch", reason="extra dermaseg[tflite] (litert-torch) missing")
    from dermaseg.checkpoint import load_model
    from dermaseg.export.parity import parity_batches
    from dermaseg.export.tflite import export_tflite

    checkpoint = calibrated_copy(tmp_path_factory.mktemp("tflite-quality"), synth_dir)
    model, meta = load_model(checkpoint)
    assert meta.quality is not None
    path = checkpoint.with_suffix(".tflite")
    images = [image for image, _ in synth_images(2, seed=3)]
    export_tflite(model, meta, path, parity_batches(images, meta)[0])
    return checkpoint, path


def _quality(predictor: Predictor, data: bytes) -> dict:
    """The estimate of an encoded image, decoded as predict and serve decode it."""
    reduced, original = read_rgb_reduced(data, predictor.meta.image_size, "upload.png")
    (result,) = segment(predictor, [Decoded(reduced, original, lambda: reduced)],
                        SegmentOptions())
    return result.quality.to_dict()


def _encoded(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_tflite_export_gives_the_checkpoint_s_quality_estimate(calibrated_tflite, synth_dir,
                                                               tmp_path):
    checkpoint, path = calibrated_tflite
    reference, exported = Predictor.load(checkpoint), Predictor.load(path)
    assert exported.meta.quality is not None
    assert exported.meta.quality == reference.meta.quality
    sharp = np.asarray(Image.open(synth_dir / "synth_0001.jpg").convert("RGB"))
    radius = 0.1 * max(sharp.shape)  # the lesion's border washed out: a much lower estimate
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(radius)))
    uploads = {"sharp": _encoded(sharp), "blurred": _encoded(blurred)}
    expected = {name: _quality(reference, data) for name, data in uploads.items()}
    assert expected["blurred"]["review"]
    assert expected["blurred"]["estimated_jaccard"] < expected["sharp"]["estimated_jaccard"] - 0.2
    for name, data in uploads.items():
        ours = _quality(exported, data)
        assert ours["estimate"] == "one pass", name
        assert ours["estimated_jaccard"] == pytest.approx(
            expected[name]["estimated_jaccard"], abs=2e-3), name
        assert ours["review"] == expected[name]["review"], name
    server = Server(path, tmp_path / "server.log").wait_ready()
    try:
        served = {name: httpx.post(f"{server.url}/v1/segment",
                                   files={"file": ("upload.png", data)}, timeout=60)
                  for name, data in uploads.items()}
    finally:
        server.stop()
    for name, reply in served.items():
        assert reply.status_code == 200, reply.text
        quality = reply.json()["quality"]
        assert quality["estimated_jaccard"] == pytest.approx(
            expected[name]["estimated_jaccard"], abs=2e-3), name
        assert quality["review"] == expected[name]["review"], name
