"""An exported model is used without PyTorch: `predict`, `evaluate` and `serve` of an `.onnx`
file run in processes where `import torch` fails, and give what the usual process gives."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dermaseg.infer.batch import PredictOptions, list_inputs, predict_files
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.tta import TTAConfig, resize_bilinear
from serving import Server

BLOCK_TORCH = "import sys\nsys.modules['torch'] = None  # `import torch` raises ImportError\n"


@pytest.fixture(scope="module")
def onnx_model(tiny_ckpt, tmp_path_factory):
    from dermaseg.checkpoint import load_model
    from dermaseg.export import export_onnx

    model, meta = load_model(tiny_ckpt)
    return export_onnx(model, meta, tmp_path_factory.mktemp("onnx") / "tiny.onnx",
                       exporter="legacy")


@pytest.fixture(scope="module")
def torchless_env(tmp_path_factory) -> dict:
    """Environment whose Python cannot import torch (a sitecustomize blocks it)."""
    folder = tmp_path_factory.mktemp("torchless")
    (folder / "sitecustomize.py").write_text(BLOCK_TORCH)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}


def run_dermaseg(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermaseg", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_blocking_really_blocks_torch(torchless_env):
    result = subprocess.run([sys.executable, "-c", "import torch"], env=torchless_env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "torch" in result.stderr


def test_predict_and_evaluate_of_an_onnx_model_run_without_torch(
        onnx_model, synth_dir, torchless_env, tmp_path):
    args = [str(onnx_model), str(synth_dir), "--tta", "--tta-scales", "0.75,1,1.25", "-q"]
    result = run_dermaseg(torchless_env, "predict", *args, "-o", str(tmp_path / "pred"))
    assert result.returncode == 0, result.stderr
    predictor = Predictor.load(onnx_model, tta=TTAConfig(scales=(0.75, 1.0, 1.25)))
    files, _ = list_inputs([str(synth_dir)])
    predict_files(predictor, files, tmp_path / "usual", PredictOptions(progress=False))
    masks = sorted(path.name for path in (tmp_path / "usual").glob("*_segmentation.png"))
    assert len(masks) == 12
    lesion_fractions = []
    for name in masks:
        written = np.asarray(Image.open(tmp_path / "pred" / name))
        np.testing.assert_array_equal(written, np.asarray(Image.open(tmp_path / "usual" / name)))
        lesion_fractions.append((written > 0).mean())
    assert any(0 < fraction < 1 for fraction in lesion_fractions)  # not all blank or full
    out = tmp_path / "pred"
    scored = run_dermaseg(torchless_env, "evaluate", "--pred", str(out), "--truth",
                           str(synth_dir), "-o", str(tmp_path / "eval"))
    assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "eval" / "report.html").is_file()


def test_serve_of_an_onnx_model_runs_without_torch(onnx_model, synth_dir, torchless_env,
                                                   tmp_path):
    server = Server(onnx_model, tmp_path / "server.log", env=torchless_env).wait_ready()
    try:
        with open(synth_dir / "synth_0003.jpg", "rb") as handle:
            reply = httpx.post(f"{server.url}/v1/segment", files={"file": handle}, timeout=60)
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    image = np.asarray(Image.open(synth_dir / "synth_0003.jpg").convert("RGB"))
    assert reply.json()["width"] == image.shape[1]


@pytest.mark.parametrize("height,width,side", [(64, 64, 48), (64, 64, 80), (17, 23, 40),
                                               (96, 96, 8), (5, 7, 5), (64, 64, 64)])
def test_resize_bilinear_equals_torch_interpolate(height, width, side):
    batch = np.random.default_rng(side).standard_normal((2, 3, height, width), np.float32)
    reference = F.interpolate(torch.from_numpy(batch), size=(side, side), mode="bilinear",
                              align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(batch, side), reference, atol=5e-5)
