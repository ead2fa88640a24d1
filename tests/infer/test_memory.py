"""Memory from metadata (issue 18, item 6): an ONNX file whose metadata says image_size 16384
(inside the allowed range) made `predict` and `evaluate` allocate ~24 GB and die by the
kernel's OOM killer with no message. The batch is now estimated against the memory available
and refused with a message (with a --batch-size that fits, when one does).

The commands run in a subprocess under an address-space limit (ulimit -v), so that the
test's outcome does not depend on this machine's memory, and a regression fails with a
MemoryError instead of taking the machine down."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from dermaseg.config import Config
from dermaseg.infer.memory import available_memory, bytes_per_image
from dermaseg.infer.onnx_backend import META_KEY
from dermaseg.model_meta import ModelMeta

LIMIT = 6 * 1024**3  # address space of the command's process


def _model(path: Path, image_size: int) -> Path:
    """A one-node ONNX model (logits = image) whose metadata gives `image_size`."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [image], [logits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ModelMeta.from_config(Config().updated({"data.image_size": 64}))
    helper.set_model_props(model, {META_KEY: json.dumps(meta.to_dict()
                                                        | {"image_size": image_size})})
    onnx.save(model, str(path))
    return path


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def dermaseg(*args) -> tuple[int, str]:
    run = subprocess.run([sys.executable, "-m", "dermaseg", *map(str, args)],
                         capture_output=True, text=True, timeout=300, preexec_fn=_limited)
    return run.returncode, run.stdout + run.stderr


def test_a_huge_input_size_is_refused_by_predict_and_evaluate(tmp_path, synth_dir):
    model = _model(tmp_path / "huge.onnx", 16384)
    for command in (["predict", model, synth_dir / "synth_0001.jpg", "-o", tmp_path / "m"],
                    ["evaluate", model, "--data", synth_dir, "-o", tmp_path / "e"]):
        code, output = dermaseg(*command, "--quiet")
        assert code == 1 and "Traceback" not in output and "MemoryError" not in output, output
        assert f"{model}: its input size of 16384 px (image_size in its metadata)" in output
        assert "not even one image fits" in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.onnx"]


def test_a_batch_too_large_is_refused_with_one_that_fits(tmp_path, synth_dir):
    model = _model(tmp_path / "big.onnx", 1024)
    code, output = dermaseg("predict", model, synth_dir / "synth_0001.jpg", "-o",
                            tmp_path / "m", "--batch-size", "64", "--quiet")
    assert code == 1 and "for a batch of 64" in output, output
    fits = int(re.search(r"use --batch-size (\d+) or less", output)[1])
    assert 1 <= fits < 64
    code, output = dermaseg("predict", model, synth_dir, "-o", tmp_path / "m",
                            "--batch-size", min(fits, 4), "--quiet")
    assert code == 0, output
    assert len(list((tmp_path / "m").glob("*_segmentation.png"))) == 12


def test_the_estimate_grows_with_the_input_and_the_tta_scales():
    meta = ModelMeta.from_config(Config().updated({"data.image_size": 512}))
    one = bytes_per_image(meta)
    assert 50e6 < one < 500e6  # 400 B per pixel of the 512 x 512 input (ResNet-50 DeepLab)
    from dermaseg.infer.tta import TTAConfig

    assert bytes_per_image(meta, TTAConfig(scales=(0.75, 1.0, 1.25))) == pytest.approx(
        one * 1.25**2, rel=1e-6)
    assert bytes_per_image(meta, on_gpu=True) < one / 5  # the host keeps inputs and maps only
    available = available_memory()
    assert available is not None and available > 0
