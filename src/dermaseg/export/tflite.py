"""Float TFLite export via litert-torch (the optional extra dermaseg[tflite]), checked against
PyTorch like every export (`dermaseg.export.parity`).

The `.tflite` file has a fixed input (1, 3, S, S); the preprocessing metadata is written beside
it as `<file>.json` (read by `dermaseg.infer.tflite_backend`, which runs the file without PyTorch).
"""

from __future__ import annotations

import copy
import json
import os
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dermaseg.errors import DermasegError
from dermaseg.export import parity
from dermaseg.export.onnx import LogitsOnly
from dermaseg.export.parity import (
    discard,
    parity_batches,
    probability_difference,
    torch_probabilities,
)
from dermaseg.fileio import atomic_path
from dermaseg.infer.tflite_backend import file_sha256
from dermaseg.model_meta import ModelMeta

TFLITE_INSTALL = 'pip install "dermaseg[tflite]"  (or: pip install litert-torch)'


def _broadcast_by_multiply(self, x: torch.Tensor) -> torch.Tensor:
    pooled = self.act(self.conv(x.mean(dim=(2, 3), keepdim=True)))
    return pooled * torch.ones_like(x[:, :1])


def tflite_friendly(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose ASPP image pooling broadcasts with a multiply instead of
    `expand`: LiteRT's BROADCAST_TO kernel rejects the shape litert-torch gives it (NHWC
    rewrite). The values are identical."""
    from dermaseg.models.aspp import ImagePooling

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, ImagePooling):
            module.forward = types.MethodType(_broadcast_by_multiply, module)
    return model


def require_litert():
    """The litert_torch module.

    Raises:
        DermasegError: litert-torch is not installed (with the pip command)."""
    try:
        import litert_torch  # pyright: ignore[reportMissingImports]  (the tflite extra)
    except ImportError as exc:
        raise DermasegError(f"--format tflite needs litert-torch: {TFLITE_INSTALL}") from exc
    return litert_torch


def export_tflite(model: torch.nn.Module, meta: ModelMeta, path: str | os.PathLike,
                  batch: np.ndarray) -> float:
    """Float TFLite via litert-torch (fixed input (1, 3, S, S)); returns the largest
    probability difference against PyTorch on `batch`. Writes `path` and `path`.json (meta).

    Raises:
        DermasegError: litert-torch is not installed (with the pip command), conversion fails,
            or an output is not finite (then nothing is written).
    """
    litert_torch = require_litert()
    path = Path(path)
    wrapped = LogitsOnly(tflite_friendly(model)).eval()
    sample = torch.from_numpy(batch[:1])
    try:
        edge = litert_torch.convert(wrapped, (sample,))
    except Exception as exc:
        raise DermasegError(f"{path}: TFLite conversion failed ({exc})") from exc
    worst = 0.0
    for item in batch:
        x = torch.from_numpy(item[None])
        logits = np.asarray(edge(x), dtype=np.float64)
        ours = 1.0 / (1.0 + np.exp(-logits))
        theirs = torch_probabilities(model, item[None])
        worst = max(worst, probability_difference(ours, theirs, str(path), "TFLite"))
    with atomic_path(path) as tmp:
        edge.export(str(tmp))
    meta_path = path.with_name(path.name + ".json")
    side = meta.to_dict() | {"tflite_sha256": file_sha256(path)}
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(side, indent=2) + "\n")
    return worst


def export_tflite_checked(model: torch.nn.Module, meta: ModelMeta, path: Path,
                          images: list[np.ndarray], *,
                          say: Callable[[str], None] = print) -> float:
    """export_tflite on `images` (HxWx3 uint8, the first 4) prepared like the Predictor does;
    returns the largest probability difference against PyTorch.

    Raises:
        DermasegError: as export_tflite, or the difference exceeds PARITY_TOLERANCE (the
            file and its .json are then removed).
    """
    batch = parity_batches(images[:4], meta)[0]
    diff = export_tflite(model, meta, path, batch)
    tolerance = parity.PARITY_TOLERANCE
    say(f"{path}: max |p_tflite - p_torch| = {diff:.2e} (tolerance {tolerance:g})")
    if not diff <= tolerance:
        discard(path, path.with_name(path.name + ".json"))
        raise DermasegError(f"{path}: removed: TFLite differs from PyTorch by {diff:.2e}")
    say(f"wrote {path} (input 1x3x{meta.image_size}x{meta.image_size}) and "
        f"{path.name}.json (the preprocessing metadata)")
    return diff
