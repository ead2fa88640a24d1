"""A `.tflite` export used like any model: predict, evaluate and serve run it through LiteRT's
interpreter and agree with the checkpoint it came from. The conversion needs litert-torch
(`make test-tflite` runs these in .venv-tflite); the refusals run everywhere."""

from __future__ import annotations

import importlib.util
import json

import httpx
import numpy as np
import pytest

from dermaseg.config import Config
from dermaseg.errors import DermasegError, UsageError
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.tta import TTAConfig
from dermaseg.model_meta import ModelMeta
from helpers.badinputs import run_cli
from helpers.fitted import shared_fitted, synth_images
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
