"""Damaged model files (issue 18, item 3): a checkpoint with a block of bytes overwritten
(same length) loaded with NaN weights, and `predict` wrote empty masks with exit 0, `export`
wrote an ONNX file, `evaluate` printed scores, `train --resume` blamed the learning rate.
Every command now refuses such a file, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dermaseg.config import Config
from dermaseg.infer.onnx_backend import META_KEY
from dermaseg.model_meta import ModelMeta
from helpers.badinputs import run_cli
from helpers.training import Interrupt, InterruptAt, tiny


def damage(checkpoint: Path, copy: Path) -> Path:
    """`checkpoint` with 256 bytes of its largest weight overwritten by 0xFF (a NaN pattern),
    the file's length unchanged."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weight = max(state.values(), key=lambda tensor: tensor.numel())
    data = checkpoint.read_bytes()
    start = data.index(weight.numpy().tobytes()[:64])
    copy.write_bytes(data[:start] + b"\xff" * 256 + data[start + 256:])
    assert copy.stat().st_size == checkpoint.stat().st_size
    return copy


def test_predict_evaluate_and_export_refuse_a_damaged_checkpoint(tiny_ckpt, synth_dir,
                                                                 tmp_path):
    bad = damage(tiny_ckpt, tmp_path / "bad.ckpt")
    commands = {
        "predict": ("predict", bad, synth_dir / "synth_0001.jpg", "-o", tmp_path / "masks"),
        "evaluate": ("evaluate", bad, "--data", synth_dir, "-o", tmp_path / "eval"),
        "export": ("export", bad, "-o", tmp_path / "bad.onnx", "--calib-count", "2"),
    }
    for name, command in commands.items():
        code, output = run_cli(*command, *(["--quiet"] if name != "export" else []))
        assert code == 1 and "Traceback" not in output, (name, output)
        assert f"{bad}: damaged:" in output and "NaN or infinite" in output, (name, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]  # nothing written


def _onnx_with(weight: np.ndarray, path: Path) -> Path:
    """A one-node model (logits = image + weight) carrying good dermaseg metadata."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Add", ["image", "w"], ["logits"])], "g",
                              [image], [logits], [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ModelMeta.from_config(Config().updated({"data.image_size": 32}))
    helper.set_model_props(model, {META_KEY: json.dumps(meta.to_dict())})
    onnx.save(model, str(path))
    return path


def test_an_onnx_file_with_non_finite_weights_is_refused(tmp_path, synth_dir):
    weight = np.zeros((1, 3, 1, 1), np.float32)
    good = _onnx_with(weight, tmp_path / "good.onnx")
    code, output = run_cli("predict", good, synth_dir / "synth_0001.jpg", "-o",
                           tmp_path / "ok", "--quiet")
    assert code == 0, output
    weight[0, 1] = np.inf
    bad = _onnx_with(weight, tmp_path / "bad.onnx")
    code, output = run_cli("predict", bad, synth_dir / "synth_0001.jpg", "-o",
                           tmp_path / "masks", "--quiet")
    assert code == 1 and f"{bad}: damaged: 1 weight tensor(s) hold NaN" in output, output
    assert "(w)" in output and not (tmp_path / "masks").exists()


@pytest.mark.usefixtures("one_thread")
def test_resume_from_a_damaged_last_checkpoint_says_it_is_damaged(tiny_prepared, tmp_path):
    from dermaseg.train.runner import train

    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(tiny(), tiny_prepared, out, progress=False, callbacks=[InterruptAt(3)])
    last = out / "last.ckpt"
    good = tmp_path / "good.ckpt"
    shutil.copy(last, good)
    damage(good, last)
    code, output = run_cli("train", "--resume", "-d", tiny_prepared, "-o", out, "-q")
    assert code == 1 and "Traceback" not in output, output
    assert f"{last}: damaged:" in output, output
    assert "learning rate" not in output and "non-finite loss" not in output
    assert not (out / "summary.json").exists()
