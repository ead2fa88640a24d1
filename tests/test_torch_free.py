"""An exported model is used without PyTorch: `predict`, `evaluate` (and `compare`) and `serve`
of an `.onnx` file run in processes that cannot import torch, and give what the usual process gives.

Two such environments: this Python with `import torch` blocked (a sitecustomize), and, under
`make test-onnx-only`, the environment of requirements-onnx.txt alone ($DERMASEG_ONNX_PYTHON),
which also proves that list complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dermaseg.cli import TORCH_STACK
from dermaseg.infer.batch import PredictOptions, predict_files
from dermaseg.infer.inputs import list_inputs
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.tta import TTAConfig, resize_bilinear
from helpers.serving import Server

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TORCH = """import sys

class NoTorch:  # `import torch` fails as if it were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)

sys.meta_path.insert(0, NoTorch())
"""
ONNX_PYTHON = os.environ.get("DERMASEG_ONNX_PYTHON")


@pytest.fixture(scope="module")
def onnx_model(tiny_ckpt, tmp_path_factory):
    from dermaseg.checkpoint import load_model
    from dermaseg.export.onnx import export_onnx

    model, meta = load_model(tiny_ckpt)
    return export_onnx(model, meta, tmp_path_factory.mktemp("onnx") / "tiny.onnx",
                       exporter="legacy")


@pytest.fixture(scope="module", params=["torch_blocked", "onnx_only_env"])
def torchless(request, tmp_path_factory) -> tuple[str, dict]:
    """(python, environment) of a process that cannot import torch."""
    if request.param == "onnx_only_env":
        if not ONNX_PYTHON:
            pytest.skip("no DERMASEG_ONNX_PYTHON: `make test-onnx-only` builds that environment")
        return ONNX_PYTHON, {key: value for key, value in os.environ.items()
                             if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    folder = tmp_path_factory.mktemp("torchless")
    (folder / "sitecustomize.py").write_text(BLOCK_TORCH)
    return sys.executable, {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}


def run_dermaseg(torchless, *args: str) -> subprocess.CompletedProcess:
    python, env = torchless
    return subprocess.run([python, "-m", "dermaseg", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_torch_cannot_be_imported_there(torchless):
    python, env = torchless
    result = subprocess.run([python, "-c", "import torch"], env=env, capture_output=True,
                            text=True)
    assert result.returncode != 0 and "torch" in result.stderr


def test_predict_and_evaluate_of_an_onnx_model(onnx_model, synth_dir, torchless, tmp_path):
    args = [onnx_model, synth_dir, "--tta", "--tta-scales", "0.75,1,1.25", "-q"]
    result = run_dermaseg(torchless, "predict", *args, "-o", tmp_path / "pred")
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
    scored = run_dermaseg(torchless, "evaluate", onnx_model, "--data", synth_dir, "-o",
                          tmp_path / "eval")
    assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "eval" / "report.html").is_file()
    compared = run_dermaseg(torchless, "compare", tmp_path / "eval", tmp_path / "eval", "-o",
                            tmp_path / "compare")
    assert compared.returncode == 0, compared.stderr
    assert (tmp_path / "compare" / "compare.png").is_file()


def test_serve_of_an_onnx_model(onnx_model, synth_dir, torchless, tmp_path):
    python, env = torchless
    server = Server(onnx_model, tmp_path / "server.log", env=env, python=python).wait_ready()
    try:
        with open(synth_dir / "synth_0003.jpg", "rb") as handle:
            reply = httpx.post(f"{server.url}/v1/segment", files={"file": handle}, timeout=60)
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    image = np.asarray(Image.open(synth_dir / "synth_0003.jpg").convert("RGB"))
    assert (reply.json()["height"], reply.json()["width"]) == image.shape[:2]


def test_what_needs_pytorch_says_so(tiny_ckpt, synth_dir, torchless, tmp_path):
    for args in (["predict", tiny_ckpt, synth_dir, "-o", tmp_path / "out"],
                 ["export", tiny_ckpt, "-o", tmp_path / "model.onnx"]):
        result = run_dermaseg(torchless, *args)
        assert result.returncode == 1
        assert "needs PyTorch" in result.stderr and "pip install" in result.stderr
        assert "Traceback" not in result.stderr
    doctor = run_dermaseg(torchless, "doctor")
    assert doctor.returncode == 0 and "PyTorch is not installed" in doctor.stdout
    assert "(litert-torch, TFLite export; needs PyTorch)" in doctor.stdout


def test_requirements_onnx_is_pyproject_without_the_pytorch_stack():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = [line.split("#")[0].strip() for line in
              (ROOT / "requirements-onnx.txt").read_text().splitlines()]
    # export, backbone weights and model folders, hf:// model folders
    only_for_torch = TORCH_STACK | {"onnxscript", "safetensors", "huggingface_hub"}

    def name(requirement: str) -> str:
        return requirement.split(">")[0].split("=")[0].split("[")[0].strip().replace("-", "_")

    expected = {dep.split("#")[0].strip() for dep in declared if name(dep) not in only_for_torch}
    assert set(filter(None, listed)) == expected


@pytest.mark.parametrize("height,width,side", [(64, 64, 48), (64, 64, 80), (17, 23, 40),
                                               (96, 96, 8), (5, 7, 5), (64, 64, 64)])
def test_resize_bilinear_equals_torch_interpolate(height, width, side):
    batch = np.random.default_rng(side).standard_normal((2, 3, height, width), np.float32)
    reference = F.interpolate(torch.from_numpy(batch), size=(side, side), mode="bilinear",
                              align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(batch, side), reference, atol=5e-5)


def test_predict_of_an_onnx_model_under_a_launcher(onnx_model, synth_dir, torchless, tmp_path):
    """LOCAL_RANK (set by torchrun, and by other launchers) made `--device auto` import torch
    to pick this process's GPU: an ONNX-only environment then said "needs PyTorch"."""
    python, env = torchless
    result = subprocess.run([python, "-m", "dermaseg", "predict", str(onnx_model), str(synth_dir),
                             "-o", str(tmp_path / "pred"), "-q"], env={**env, "LOCAL_RANK": "0"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "pred").glob("*_segmentation.png"))) == 12


def test_a_submodule_missing_from_installed_pytorch_is_not_called_pytorch_missing(
        monkeypatch, capsys):
    """torchvision too old for transforms.v2 (or timm too new for some torch module): installing
    PyTorch cures nothing there, so the error goes out as it is, naming the module."""
    import dermaseg.cli as cli

    def missing(name: str):
        def app():
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return app

    monkeypatch.setattr(cli, "app", missing("torchvision.transforms.v2"))
    with pytest.raises(ModuleNotFoundError, match="torchvision.transforms.v2"):
        cli.main()
    monkeypatch.setattr(cli, "app", missing("torchvision"))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 1 and "needs PyTorch" in capsys.readouterr().err
