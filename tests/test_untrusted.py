"""Untrusted model files through every CLI path that loads one: a pickle that would run code is
refused (and runs nothing), an ONNX file is checked before onnxruntime or the server uses it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dermaseg.config import Config
from dermaseg.infer.onnx_backend import META_KEY
from dermaseg.model_meta import ModelMeta
from helpers.badinputs import run_cli


class Exploit:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def evil(tmp_path):
    """Two crafted checkpoints: a torch.save'd dict holding the exploit, and a raw pickle."""
    marker = tmp_path / "pwned"
    wrapped, raw = tmp_path / "evil.ckpt", tmp_path / "raw.ckpt"
    torch.save({"state_dict": {}, "dermaseg": {}, "x": Exploit(str(marker))}, wrapped)
    raw.write_bytes(pickle.dumps(Exploit(str(marker))))
    return marker, [wrapped, raw]


def test_crafted_pickles_are_refused_by_every_command(evil, synth_dir, tmp_path):
    marker, files = evil
    image = synth_dir / "synth_0001.jpg"
    for path in files:
        for args in (["predict", path, image, "-o", tmp_path / "p", "--quiet"],
                     ["evaluate", path, "--data", synth_dir, "-o", tmp_path / "e", "--quiet"],
                     ["export", path, "-o", tmp_path / "m.onnx"]):
            code, output = run_cli(*args)
            assert code == 1 and path.name in output and "Traceback" not in output, output
            assert not marker.exists(), f"{args[0]} ran code from {path.name}"
        assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())
        assert not (tmp_path / "e").exists() and not (tmp_path / "m.onnx").exists()
    done = subprocess.run([sys.executable, "-m", "dermaseg", "serve", files[0], "--port", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "refused" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name,data", [
    ("junk.ckpt", b"garbage"), ("config.ckpt", b"model:\n  arch: deeplabv3\n"),
    ("empty.ckpt", b""), ("noise.ckpt", np.random.default_rng(1).bytes(2048)),
])
def test_files_that_are_not_checkpoints_are_named_as_such(synth_dir, tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    code, output = run_cli("predict", tmp_path / name, synth_dir / "synth_0001.jpg", "-o",
                           tmp_path / "p", "--quiet")
    assert code == 1 and f"{name}: not a PyTorch checkpoint file" in output, output
    assert "refused" not in output and not (tmp_path / "p").exists()


def test_a_protocol_0_pickle_with_code_is_still_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.ckpt"
    path.write_bytes(pickle.dumps(Exploit(str(marker)), protocol=0))  # plain text opcodes
    code, output = run_cli("export", path, "-o", tmp_path / "m.onnx")
    assert code == 1 and "old.ckpt: refused" in output and not marker.exists(), output


def _model(inputs=("image",), meta: str | None = None, output="logits"):
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3, "h", "w"])
              for n in inputs]
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", 3, "h", "w"])
    node = helper.make_node("Identity", [inputs[0]], [output])
    model = helper.make_model(helper.make_graph([node], "g", values, [out]))
    if meta is not None:
        helper.set_model_props(model, {META_KEY: meta})
    return model


def bad_onnx_files(folder):
    meta = json.dumps(ModelMeta.from_config(Config()).to_dict())
    files = {"random.onnx": np.random.default_rng(0).bytes(4096),
             "empty.onnx": b""}
    models = {"noinput.onnx": _model(inputs=("x",), meta=meta),
              "twoinputs.onnx": _model(inputs=("image", "extra"), meta=meta),
              "nooutput.onnx": _model(meta=meta, output="y"),
              "nometa.onnx": _model()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for name, model in models.items():
        onnx.save(model, str(folder / name))
    return sorted(files) + sorted(models)


def test_bad_onnx_files_are_refused_by_predict_evaluate_and_serve(synth_dir, tmp_path):
    image = synth_dir / "synth_0001.jpg"
    for name in bad_onnx_files(tmp_path):
        code, output = run_cli("predict", tmp_path / name, image, "-o", tmp_path / "p",
                               "--quiet")
        assert code == 1 and name in output and "Traceback" not in output, output
        code, output = run_cli("evaluate", tmp_path / name, "--data", synth_dir, "-o",
                               tmp_path / "e", "--quiet")
        assert code == 1 and name in output and "Traceback" not in output, output
    assert not list((tmp_path / "p").glob("*.png")) and not (tmp_path / "e").exists()
    for name in ("random.onnx", "nometa.onnx"):
        done = subprocess.run([sys.executable, "-m", "dermaseg", "serve", tmp_path / name,
                               "--port", "1"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and name in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
