"""A TFLite export in use: `model.tflite` with its side file `model.tflite.json` (the
ModelMeta), run by LiteRT's interpreter (ai-edge-litert), without PyTorch. So the model that
goes on a phone is checked on a desktop with the same pipeline as its checkpoint:
`dermaseg predict model.tflite ...`, `dermaseg evaluate model.tflite --data ...`.

The file `dermaseg export --format tflite` writes takes one (1, 3, S, S) float32 image,
letterboxed and normalised like `Predictor.prepare`, and gives (1, 1, S, S) logits.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from dermaseg.errors import DermasegError, UsageError
from dermaseg.model_meta import ModelMeta

LITERT_INSTALL = "pip install ai-edge-litert"


def read_tflite_meta(path: str | Path) -> ModelMeta:
    """The ModelMeta of `path` from its side file `path`.json (which also holds the SHA-256
    of the .tflite it was written for, since dermaseg 0.1: a side file of another model is
    refused).

    Raises:
        DermasegError: the side file is missing, not JSON, incomplete or of another file.
    """
    side = Path(f"{path}.json")
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError as exc:
        raise DermasegError(f"{path}: no {side.name} beside it (the model's input size, "
                            "normalisation and threshold, written by `dermaseg export --format "
                            "tflite`)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DermasegError(f"{side}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise DermasegError(f"{side}: expected a JSON object of model metadata")
    expected = data.get("tflite_sha256")
    if expected is not None and expected != file_sha256(path):
        raise DermasegError(f"{side}: written for another .tflite file (its SHA-256 differs "
                            f"from {Path(path).name}'s); export the model again")
    return ModelMeta.from_dict(data, str(side))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Raises:
        DermasegError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DermasegError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


class TfliteBackend:
    """float32 (N, 3, S, S) numpy -> logits (N, 1, S, S), one image per interpreter call (the
    export has a fixed batch of 1). Calls are serialised: an interpreter is not thread-safe."""

    max_batch = 1

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        if str(device) not in ("auto", "cpu"):
            raise UsageError(f"--device {device}: a TFLite model runs on the CPU here (auto, "
                             "cpu)")
        try:
            from ai_edge_litert.interpreter import (  # pyright: ignore[reportMissingImports]
                Interpreter,  # the tflite extra, installed in an environment of its own
            )
        except ImportError as exc:
            raise DermasegError(f"{path}: running a .tflite model needs LiteRT: "
                                f"{LITERT_INSTALL}") from exc
        try:
            self.interpreter = Interpreter(model_path=str(path))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DermasegError(f"{path}: not a readable TFLite model ({exc})") from exc
        self.input, self.output = self._check_io(path)
        self.fixed_side = int(self.input["shape"][-1])
        self.lock = threading.Lock()
        types = {detail["dtype"] for detail in self.interpreter.get_tensor_details()}
        self.precision = ("int8" if types & {np.int8, np.uint8}
                          else "fp16" if np.float16 in types else "fp32")

    def _check_io(self, path) -> tuple[dict, dict]:
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise DermasegError(f"{path}: expected one input and one output, found "
                                f"{len(inputs)} and {len(outputs)}")
        shape, out_shape = list(inputs[0]["shape"]), list(outputs[0]["shape"])
        if len(shape) != 4 or shape[:2] != [1, 3] or shape[2] != shape[3]:
            raise DermasegError(f"{path}: input shape {shape}, expected [1, 3, S, S]")
        if out_shape != [1, 1, shape[2], shape[3]] or inputs[0]["dtype"] != np.float32:
            raise DermasegError(f"{path}: output shape {out_shape} (expected [1, 1, S, S]) or "
                                "input not float32: not a dermaseg export")
        return inputs[0], outputs[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = []
        with self.lock:
            for image in batch:
                self.interpreter.set_tensor(self.input["index"],
                                            np.ascontiguousarray(image[None], np.float32))
                self.interpreter.invoke()
                logits.append(self.interpreter.get_tensor(self.output["index"]).copy())
        return np.concatenate(logits).astype(np.float32, copy=False)
