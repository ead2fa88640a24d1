"""`train.compile`: the model through `torch.compile`, or eager when compiling fails.

Compilation happens at the first call in each mode (training, then validation) and fails in
ways a user cannot fix from the recipe: no Triton for the GPU, an operator the compiler does
not support, a compiler bug. Such a failure costs the run its speed-up, never the run: the
model goes on eager, with a one-line note. Once a mode's first compiled call has succeeded,
errors are the model's own and propagate; an error eager would raise too (a wrong shape) is
raised again by the eager call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only


class CompiledOrEager:
    """Calls `torch.compile(model, mode=mode, backend=backend)`, or `model` itself from the
    first failed compilation on. Not a Module: the weights stay `model`'s alone (checkpoints,
    optimiser, freezing see the eager module)."""

    def __init__(self, model: torch.nn.Module, mode: str | None = None,
                 backend: str | Callable[..., Any] = "inductor") -> None:
        self.model = model
        self.failed: str | None = None  # why compiling failed, once it has
        self._proven: set[bool] = set()  # modes (model.training) compiled and run once
        try:
            self.compiled = torch.compile(model, mode=mode, backend=backend)
        except Exception as exc:  # noqa: BLE001 - refused before any call: the eager model runs
            self.compiled = model
            self.failed = one_line_error(exc)
            _note(f"note: torch.compile failed ({self.failed}): training eager")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.failed is not None:
            return self.model(images)
        mode = self.model.training
        if mode in self._proven:
            return self.compiled(images)
        try:
            out = self.compiled(images)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager model runs
            self.failed = one_line_error(exc)
            _note(f"note: torch.compile failed ({self.failed}): training eager")
            return self.model(images)
        self._proven.add(mode)
        return out


def one_line_error(exc: BaseException, limit: int = 200) -> str:
    """"BackendCompilerFailed: backend='inductor' raised: RuntimeError: Cannot find a
    working triton installation ...": the error and its cause, cut to `limit` characters."""
    text = _first_line(exc)
    cause = getattr(exc, "inner_exception", None) or exc.__cause__  # dynamo's: the former
    if isinstance(cause, BaseException):
        text = f"{text.rstrip(':')}: {_first_line(cause)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@rank_zero_only
def _note(line: str) -> None:
    print(line, file=sys.stderr)
