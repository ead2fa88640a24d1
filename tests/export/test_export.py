"""ONNX export parity (dynamic shapes), metadata contract, INT8 agreement, check_onnx refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from dermaseg.checkpoint import load_model, save_checkpoint
from dermaseg.cli import app
from dermaseg.config import Config
from dermaseg.errors import DermasegError
from dermaseg.export.onnx import export_onnx
from dermaseg.export.parity import PARITY_TOLERANCE, parity_batches, torch_probabilities
from dermaseg.export.tflite import export_tflite
from dermaseg.infer.onnx_backend import META_KEY, check_onnx, onnx_probabilities, onnx_session
from dermaseg.infer.predictor import Predictor
from dermaseg.model_meta import ModelMeta
from dermaseg.models.factory import build_model
from helpers.badinputs import run_cli
from helpers.fitted import shared_fitted, synth_images

SIZES = [(2, 64, 64), (1, 80, 48), (1, 33, 57)]  # (batch, height, width): square, portrait, odd


def _untrained(path, arch: str, size: int = 64):
    torch.manual_seed(0)
    config = Config().updated({"model.arch": arch, "model.backbone": "resnet18",
                               "data.image_size": size})
    save_checkpoint(path, build_model(config.model).eval(), ModelMeta.from_config(config))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return shared_fitted()


@pytest.mark.parametrize("arch,exporter", [("deeplabv3", "dynamo"), ("deeplabv3plus", "dynamo"),
                                           ("deeplabv3", "legacy")])
def test_onnx_matches_pytorch_at_three_sizes(tmp_path, arch, exporter):
    model, meta = load_model(_untrained(tmp_path / "m.ckpt", arch))
    path = export_onnx(model, meta, tmp_path / "m.onnx", exporter=exporter)
    session = onnx_session(path)
    for batch, height, width in SIZES:
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        ours = onnx_probabilities(session, x.numpy())
        theirs = torch_probabilities(model, x.numpy())
        assert ours.shape == (batch, 1, height, width)
        assert np.abs(ours - theirs).max() <= PARITY_TOLERANCE
    dims = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_metadata_lets_the_predictor_load_the_onnx_alone(tmp_path, fitted):
    checkpoint = fitted
    model, meta = load_model(checkpoint)
    path = export_onnx(model, meta, tmp_path / "fit.onnx")
    stored = check_onnx(path)
    assert stored.to_dict() == meta.to_dict()
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props[META_KEY])["image_size"] == 64
    images = [image for image, _ in synth_images(3, seed=5, width=90, height=70)]
    from_onnx = Predictor.load(path).predict_proba(images)
    from_ckpt = Predictor.load(checkpoint).predict_proba(images)
    for a, b in zip(from_onnx, from_ckpt, strict=True):
        assert a.shape == (70, 90)
        assert np.abs(a - b).max() <= PARITY_TOLERANCE


def test_export_int8_cli_agrees_with_fp32(tmp_path, fitted):
    """A briefly fitted model (its masks are lesions, not noise) keeps its masks in INT8."""
    checkpoint = fitted
    calib = tmp_path / "calib"
    calib.mkdir()
    from PIL import Image

    for index, (image, _) in enumerate(synth_images(12, seed=7)):
        Image.fromarray(image).save(calib / f"img_{index:02d}.png")
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--int8", "--calib", str(calib),
                                      "-o", str(out), "--holdout", "4", "--repeats", "2",
                                      "--exporter", "legacy"])
    assert result.exit_code == 0, result.output
    assert "max |p_onnx - p_torch|" in result.output
    report = json.loads((tmp_path / "model.report.json").read_text())
    assert report["images"] == 4
    assert report["dice_min"] >= 0.95
    assert report["size_ratio"] < 0.35
    proto = onnx.load(str(out))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not dynamic
    assert check_onnx(out).image_size == 64
    # the INT8 model segments like the float one on images it never saw
    images = [image for image, _ in synth_images(4, seed=11)]
    fp32 = Predictor.load(tmp_path / "model.fp32.onnx")
    int8 = Predictor.load(out)
    a = np.concatenate([fp32.predict(image).ravel() for image in images])
    b = np.concatenate([int8.predict(image).ravel() for image in images])
    assert a.mean() > 0.05  # the masks hold lesions
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_parity_refuses_non_finite_probabilities(bad):
    from dermaseg.export.parity import probability_difference

    ours, theirs = np.full((1, 1, 2, 2), 0.5), np.full((1, 1, 2, 2), 0.5)
    assert probability_difference(ours, theirs, "m.onnx", "ONNX Runtime") == 0.0
    ours[0, 0, 1, 1] = theirs[0, 0, 1, 1] = bad  # NaN against NaN is no match
    with pytest.raises(DermasegError, match=r"m.onnx: non-finite probabilities .* input "
                                            r"\(1, 1, 2, 2\), of 4 values: ONNX Runtime 1, "
                                            r"PyTorch 1"):
        probability_difference(ours, theirs, "m.onnx", "ONNX Runtime")


def test_export_of_a_model_giving_nan_fails_and_removes_the_file(tmp_path):
    """Before, max(0.0, nan) is 0.0: a model giving NaN everywhere passed its check."""
    from dermaseg.export.parity import export_onnx_checked

    model, meta = load_model(_untrained(tmp_path / "m.ckpt", "deeplabv3"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    images = [image for image, _ in synth_images(2, seed=3)]
    out = tmp_path / "m.onnx"
    with pytest.raises(DermasegError, match=r"m.onnx: non-finite probabilities"):
        export_onnx_checked(model, meta, out, images, 18, "legacy", say=lambda line: None)
    assert not out.exists()


def test_export_fails_and_removes_the_file_over_tolerance(tmp_path, monkeypatch):
    from dermaseg.export import parity

    checkpoint = _untrained(tmp_path / "m.ckpt", "deeplabv3")
    monkeypatch.setattr(parity, "PARITY_TOLERANCE", -1.0)  # nothing can pass
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(checkpoint), "-o", str(out),
                                      "--exporter", "legacy", "--calib-count", "2"])
    assert isinstance(result.exception, DermasegError)
    assert "differs from PyTorch" in str(result.exception)
    assert not out.exists()


def test_export_keeps_earlier_files_unless_overwrite(tmp_path):
    checkpoint = _untrained(tmp_path / "m.ckpt", "deeplabv3")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"a deployed model")
    code, output = run_cli("export", checkpoint, "-o", out, "--calib-count", "2")
    assert code == 2 and f"{out}: already exists" in output and "--overwrite" in output, output
    assert out.read_bytes() == b"a deployed model"
    (tmp_path / "q.fp32.onnx").write_bytes(b"x")  # an --int8 export's float32 sibling
    code, output = run_cli("export", checkpoint, "--int8", "-o", tmp_path / "q.int8.onnx")
    assert code == 2 and "q.fp32.onnx: already exists" in output, output
    code, output = run_cli("export", checkpoint, "-o", checkpoint)
    assert code == 2 and "the checkpoint being exported" in output, output
    code, output = run_cli("export", checkpoint, "-o", out, "--calib-count", "2",
                           "--exporter", "legacy", "--overwrite")
    assert code == 0, output
    assert check_onnx(out).image_size == 64


@pytest.mark.parametrize("option", [["--repeats", "0"], ["--holdout", "0"]])
def test_int8_refuses_bad_counts_before_writing(tmp_path, option):
    checkpoint = _untrained(tmp_path / "m.ckpt", "deeplabv3")
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--int8", "--calib-count", "2",
                                      "-o", str(tmp_path / "r0" / "m.int8.onnx"), *option])
    assert result.exit_code == 2 and option[0] in result.output, result.output
    assert not (tmp_path / "r0").exists()


def test_int8_failure_after_quantizing_removes_its_files(tmp_path):
    checkpoint = _untrained(tmp_path / "m.ckpt", "deeplabv3")
    (tmp_path / "m.report.json").mkdir()  # the report cannot be written
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--int8", "--calib-count", "2",
                                      "--repeats", "1", "--exporter", "legacy", "--overwrite",
                                      "-o", str(tmp_path / "m.int8.onnx")])
    assert isinstance(result.exception, DermasegError), result.output
    assert "m.report.json" in str(result.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.report.json"]


def test_int8_unexpected_failure_is_a_clear_error_and_removes_its_files(tmp_path):
    from dermaseg.export.int8 import export_int8

    model, meta = load_model(_untrained(tmp_path / "m.ckpt", "deeplabv3"))
    images = [image for image, _ in synth_images(2, seed=3)]
    with pytest.raises(DermasegError, match="m.int8.onnx: INT8 export failed.*Statistics"):
        export_int8(model, meta, tmp_path / "m.int8.onnx", images, opset=18,
                    exporter="legacy", holdout=1, repeats=0)  # no timed run: no median
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


def _graph(input_name="image", output_name="logits", meta: str | None = "{}"):
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["n", 3, "h", "w"])
    node = helper.make_node("Identity", [input_name], [output_name])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]))
    if meta is not None:
        helper.set_model_props(model, {META_KEY: meta})
    return model


@pytest.mark.parametrize("case,message", [
    ("text", "not an ONNX file"), ("missing", "no such ONNX file"),
    ("input", "named 'image'"), ("nometa", "no 'dermaseg' metadata"),
    ("badjson", "not JSON"), ("incomplete", "incomplete dermaseg metadata"),
    ("zero_size", r"bad dermaseg metadata: image_size 0 \(expected 1..16384\); std \[1.0, "
                  r"0.0, 1.0\] \(expected 3 numbers > 0\)"),
])
def test_check_onnx_refuses_bad_files(tmp_path, case, message):
    path = tmp_path / "bad.onnx"
    good_meta = json.dumps(ModelMeta.from_config(Config()).to_dict())
    if case == "text":
        path.write_text("not a model at all\n")
    elif case != "missing":
        model = {"input": _graph(input_name="x", meta=good_meta), "nometa": _graph(meta=None),
                 "badjson": _graph(meta="{oops"), "incomplete": _graph(meta="{}"),
                 "zero_size": _graph(meta=json.dumps(json.loads(good_meta)
                                                     | {"image_size": 0, "std": [1, 0, 1]}))
                 }[case]
        onnx.save(model, str(path))
    with pytest.raises(DermasegError, match=message):
        check_onnx(path)


def test_tflite_float_matches_pytorch(tmp_path):
    pytest.importorskip("litert_torch", reason="extra dermaseg[tflite] (litert-torch) missing")
    model, meta = load_model(_untrained(tmp_path / "m.ckpt", "deeplabv3"))
    images = [image for image, _ in synth_images(2, seed=3)]
    diff = export_tflite(model, meta, tmp_path / "m.tflite", parity_batches(images, meta)[0])
    assert diff <= PARITY_TOLERANCE
    assert (tmp_path / "m.tflite").stat().st_size > 1000


def test_tflite_without_the_extra_names_the_pip_command(tmp_path):
    try:
        import litert_torch  # noqa: F401
        pytest.skip("litert-torch is installed here")
    except ImportError:
        pass
    checkpoint = _untrained(tmp_path / "m.ckpt", "deeplabv3")
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "tflite",
                                      "--calib-count", "2"])
    assert isinstance(result.exception, DermasegError)
    assert "pip install" in str(result.exception)
    assert "checking on" not in result.output  # refused before making calibration images


def test_calibration_reads_a_prepared_train_split_or_a_folder(tmp_path, synth_dir):
    from dermaseg.data.prepare import prepare_dataset
    from dermaseg.export.calibration import calibration_images

    prepare_dataset(synth_dir, tmp_path / "prep", size=64, workers=1, progress=False)
    images, source = calibration_images(tmp_path / "prep", 5, 64, progress=False)
    assert "prepared dataset" in source and len(images) == 5
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in images)
    images, source = calibration_images(synth_dir, 4, 64, progress=False)
    assert len(images) == 4 and images[0].ndim == 3  # masks are left out
