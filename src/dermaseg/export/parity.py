"""The check every export passes: its probabilities against PyTorch's on the same inputs.

An export is kept only when the largest |p_export - p_torch| (after the sigmoid) is within
PARITY_TOLERANCE on every pixel; otherwise, or when the check is interrupted, its files are
removed. A NaN or an infinity in either output fails the check (NaN against NaN is no match).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dermaseg.errors import DermasegError
from dermaseg.export.onnx import LogitsOnly, export_onnx
from dermaseg.infer.onnx_backend import onnx_probabilities, onnx_session
from dermaseg.model_meta import ModelMeta

PARITY_TOLERANCE = 1e-4  # largest allowed |p_export - p_torch| after the sigmoid


def torch_probabilities(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """Normalised (N, 3, H, W) float32 -> sigmoid probabilities (N, 1, H, W) from PyTorch."""
    with torch.inference_mode():
        return torch.sigmoid(LogitsOnly(model).eval()(torch.from_numpy(batch))).numpy()


def parity_batches(images: list[np.ndarray], meta: ModelMeta) -> list[np.ndarray]:
    """Inputs for the parity check: the images prepared exactly like the Predictor does, at
    the model's size, plus one non-square batch of another size to exercise dynamic axes."""
    from dermaseg.preprocessing import Preprocessing

    preprocessing = Preprocessing.from_meta(meta)
    prepared = np.stack([preprocessing(image)[0] for image in images])
    side = meta.image_size
    odd = torch.nn.functional.interpolate(
        torch.from_numpy(prepared[:2]), size=(side - side // 4 + 1, side + side // 8 + 3),
        mode="bilinear", align_corners=False,
    ).numpy()
    return [prepared, odd]


def probability_difference(ours: np.ndarray, theirs: np.ndarray, where: str,
                           what: str) -> float:
    """Largest |ours - theirs| of two probability arrays of one shape (`what` names `ours`).

    Raises:
        DermasegError: either array holds a NaN or an infinity (named with `where`, e.g. the
            exported file, and the input's shape): such outputs are never a match.
    """
    bad = {what: int(ours.size - np.count_nonzero(np.isfinite(ours))),
           "PyTorch": int(theirs.size - np.count_nonzero(np.isfinite(theirs)))}
    if any(bad.values()):
        counts = ", ".join(f"{name} {count}" for name, count in bad.items())
        raise DermasegError(f"{where}: non-finite probabilities (NaN or infinity) for input "
                            f"{ours.shape}, of {ours.size} values: {counts}; a model whose "
                            "output is not finite fails the parity check")
    return float(np.abs(ours - theirs).max())


def max_probability_difference(model: torch.nn.Module, onnx_path: str | os.PathLike,
                               batches: list[np.ndarray]) -> float:
    """Largest |sigmoid(onnx) - sigmoid(torch)| over every pixel of every batch.

    Raises:
        DermasegError: an output shape differs from PyTorch's, or an output is not finite.
    """
    session = onnx_session(onnx_path)
    worst = 0.0
    for batch in batches:
        ours = onnx_probabilities(session, batch)
        theirs = torch_probabilities(model, batch)
        if ours.shape != theirs.shape:
            raise DermasegError(f"{onnx_path}: output shape {ours.shape} != PyTorch "
                                f"{theirs.shape} for input {batch.shape}")
        worst = max(worst, probability_difference(ours, theirs, str(onnx_path),
                                                  "ONNX Runtime"))
    return worst


def discard(*paths: Path) -> None:
    """Remove files that failed their check (those not there are fine)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def export_onnx_checked(model: torch.nn.Module, meta: ModelMeta, path: Path,
                        images: list[np.ndarray], opset: int, exporter: str, *,
                        say: Callable[[str], None] = print) -> float:
    """Export to ONNX, run ONNX Runtime on `images` (HxWx3 uint8; the first 4, see
    parity_batches) and compare with PyTorch; returns the largest probability difference.

    Raises:
        UsageError: an unknown exporter or an opset out of range.
        DermasegError: the export fails, or differs from PyTorch by more than
            PARITY_TOLERANCE or gives non-finite outputs; the file is then removed (also
            when the check is interrupted).
    """
    export_onnx(model, meta, path, opset=opset, exporter=exporter)
    try:
        diff = max_probability_difference(model, path, parity_batches(images[:4], meta))
    except BaseException:  # an unchecked model is not left behind (error, Ctrl-C)
        discard(path)
        raise
    say(f"{path}: max |p_onnx - p_torch| = {diff:.2e} (tolerance {PARITY_TOLERANCE:g})")
    if not diff <= PARITY_TOLERANCE:
        discard(path)
        raise DermasegError(f"{path}: removed: ONNX Runtime differs from PyTorch by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE:g}); try --exporter legacy or another --opset")
    return diff
