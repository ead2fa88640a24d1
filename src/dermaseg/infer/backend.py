"""What the Predictor needs of a model runtime, whichever it is.

Three implementations: `TorchBackend` (a checkpoint, PyTorch), `OnnxBackend` (ONNX Runtime)
and `TfliteBackend` (LiteRT); the last two import no PyTorch, so an exported model runs in an
environment without it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Normalised (N, 3, H, W) float32 -> logits (N, 1, H, W) float32, both numpy.

    `fixed_side` is the input's static side when the runtime has one (TFLite, an ONNX file
    exported with a fixed size), else None: any side the model's stride allows.
    """

    @property
    def fixed_side(self) -> int | None: ...

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...
