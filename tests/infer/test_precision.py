"""The number format a loaded model computes in (shown by `serve` as the model's precision)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from dermaseg.infer.onnx_backend import onnx_precision
from dermaseg.infer.torch_backend import TorchBackend


def _graph_file(tmp_path, nodes, initializers, name="m.onnx"):
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [value("logits", TensorProto.FLOAT, [1, 3, 4, 4])], initializers)
    path = tmp_path / name
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_a_graph_with_quantize_dequantize_pairs_is_int8(tmp_path):
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    nodes = [helper.make_node("QuantizeLinear", ["image", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["logits"])]
    assert onnx_precision(_graph_file(tmp_path, nodes, [scale, zero])) == "int8"


def test_a_float_graph_is_fp32_and_half_weights_are_fp16(tmp_path):
    identity = [helper.make_node("Identity", ["image"], ["logits"])]
    assert onnx_precision(_graph_file(tmp_path, identity, [])) == "fp32"
    half = numpy_helper.from_array(np.ones(3, np.float16), "w")
    assert onnx_precision(_graph_file(tmp_path, identity, [half], "h.onnx")) == "fp16"


def test_a_checkpoint_model_reports_its_weights_float_type():
    assert TorchBackend(torch.nn.Conv2d(3, 1, 1)).precision == "fp32"
    assert TorchBackend(torch.nn.Conv2d(3, 1, 1).to(torch.bfloat16)).precision == "bf16"
