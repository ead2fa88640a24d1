"""Deployment audit: the export honours --opset and the output contract (N, 1, H, W)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dermaseg.config import Config
from dermaseg.errors import DermasegError
from dermaseg.export.onnx import export_onnx
from dermaseg.export.parity import PARITY_TOLERANCE, torch_probabilities
from dermaseg.infer.onnx_backend import onnx_probabilities, onnx_session
from dermaseg.model_meta import ModelMeta
from dermaseg.models.factory import build_model
from helpers.badinputs import run_cli


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    config = Config().updated({"model.backbone": "resnet18", "model.aspp_channels": 32,
                               "data.image_size": 64})
    return build_model(config.model).eval(), ModelMeta.from_config(config)


def _opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("opset,exporter", [(13, "auto"), (17, "auto"), (18, "legacy")])
def test_export_writes_the_requested_opset(tmp_path, small_model, opset, exporter):
    """--opset 13 used to give opset 18 (dynamo converts down or silently keeps 18), and the
    legacy exporter capped every request at 17."""
    model, meta = small_model
    path = export_onnx(model, meta, tmp_path / "m.onnx", opset=opset, exporter=exporter)
    assert _opset(path) == opset
    x = np.random.default_rng(0).standard_normal((2, 3, 49, 75)).astype(np.float32)
    ours = onnx_probabilities(onnx_session(path), x)
    assert np.abs(ours - torch_probabilities(model, x)).max() <= PARITY_TOLERANCE


def test_dynamo_alone_refuses_an_opset_it_cannot_write(tmp_path, small_model):
    model, meta = small_model
    with pytest.raises(DermasegError, match="m.onnx: ONNX export failed.*not the requested 13"):
        export_onnx(model, meta, tmp_path / "m.onnx", opset=13, exporter="dynamo")
    assert list(tmp_path.iterdir()) == []


def test_auto_exports_old_opsets_without_the_dynamo_converter(tmp_path, small_model, capfd):
    """--opset 13 worked but printed the version converter's traceback first."""
    model, meta = small_model
    assert _opset(export_onnx(model, meta, tmp_path / "m.onnx", opset=13)) == 13
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize(("options", "message"), [
    (["--opset", "99"], "--opset 99: dermaseg exports opsets 13 to"),
    (["--opset", "12"], "--opset 12: dermaseg exports opsets 13 to"),
    (["--exporter", "jit"], "--exporter jit: use auto, dynamo or legacy"),
    (["--calib-count", "1"], "--calib-count must be at least 2"),
    (["-o", "{tmp}"], "a folder; -o takes the file to write"),
])
def test_export_options_are_refused_before_loading(tmp_path, options, message):
    not_loaded = tmp_path / "m.ckpt"
    not_loaded.write_bytes(b"never read: the options are refused first")
    options = [option.format(tmp=tmp_path) for option in options]
    code, output = run_cli("export", not_loaded, *options)
    assert code == 2 and message in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_exported_output_is_n_1_h_w(tmp_path, small_model, exporter):
    model, meta = small_model
    proto = onnx.load(str(export_onnx(model, meta, tmp_path / "m.onnx", exporter=exporter)))
    assert _dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(proto.graph.output[0]) == ["batch", 1, "height", "width"]


def test_logits_of_a_model_returning_its_edge_map_are_the_mask(tmp_path):
    """An edge-head model with return_edge set returns {"mask", "edge"}; LogitsOnly looked
    for an "out" key, so the parity check and the export got a dict."""
    from dermaseg.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", aspp_channels=32,
                                    edge_head=True)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    plain = torch_probabilities(model, x)
    model.return_edge = True
    np.testing.assert_array_equal(torch_probabilities(model, x), plain)


def test_an_interrupted_parity_check_leaves_no_unchecked_model(tmp_path, small_model,
                                                              monkeypatch):
    """Ctrl-C (or an ONNX Runtime error) during the check used to leave the unverified file."""
    from dermaseg.export import parity
    from dermaseg.export.parity import export_onnx_checked

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity, "max_probability_difference", interrupted)
    model, meta = small_model
    images = [np.zeros((40, 60, 3), np.uint8)]
    with pytest.raises(KeyboardInterrupt):
        export_onnx_checked(model, meta, tmp_path / "m.onnx", images, 18, "auto")
    assert list(tmp_path.iterdir()) == []
