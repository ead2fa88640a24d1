"""Every model variant exports to ONNX with dynamic batch, height and width, and ONNX Runtime
gives the same logits as PyTorch at two different input sizes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dermaseg.config import ModelConfig
from dermaseg.models import build_model

OPTIONS = {"plain": {}, "attention": {"attention": "scse"}, "edge": {"edge_head": True},
           "attention+edge": {"attention": "scse", "edge_head": True}}
FAST = {("resnet18", "deeplabv3plus", "attention+edge")}


def _variants():
    combos = [("resnet18", arch, option) for arch in ("deeplabv3", "deeplabv3plus")
              for option in OPTIONS]
    combos += [("xception65", "deeplabv3plus", "attention+edge"),
               ("mobilenetv3_large_100", "deeplabv3", "plain")]
    for combo in combos:
        yield pytest.param(combo, id="-".join(combo),
                           marks=() if combo in FAST else pytest.mark.slow)


@pytest.mark.parametrize("variant", list(_variants()))
def test_onnx_export_with_dynamic_height_and_width(variant, tmp_path):
    backbone, arch, option = variant
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, backbone=backbone, aspp_channels=32,
                                    decoder_channels=32, **OPTIONS[option])).eval()
    path = tmp_path / "model.onnx"
    dims = {0: torch.export.Dim("batch", max=64), 2: torch.export.Dim("height", min=32, max=4096),
            3: torch.export.Dim("width", min=32, max=4096)}
    torch.onnx.export(model, (torch.randn(2, 3, 64, 80),), path, dynamo=True,
                      input_names=["image"], output_names=["logits"],
                      dynamic_shapes={"x": dims}, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 96, 128), (2, 3, 65, 97)):
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
