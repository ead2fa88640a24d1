"""Host-to-device copies that do not make the CPU wait for the GPU.

A plain `tensor.to("cuda")` or `torch.tensor(values, device="cuda")` copies from pageable
memory and then synchronises the stream: the CPU waits until every kernel queued before it
has run, so it can no longer prepare the next step while the GPU works. In a training step
that costs the GPU idle time of each such copy; the batch hooks and the device augmentation
use these two functions instead.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
import warnings
from collections.abc import Iterator, Sequence

import torch


def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; to a GPU through pinned memory, without waiting for it."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=64)
def _cached_constant(values: tuple[float, ...], shape: tuple[int, ...], device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    # a normal tensor even when first asked for under torch.inference_mode (validation): an
    # inference tensor could not be saved for a later training step's backward
    with torch.inference_mode(False):
        return upload(torch.tensor(values, dtype=dtype).view(shape), device)


def constant(values: Sequence[float], device: torch.device | str, shape: Sequence[int] = (-1,),
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor on `device`, copied there once and then reused (read-only)."""
    return _cached_constant(tuple(float(v) for v in values), tuple(shape), torch.device(device),
                            dtype)


@contextlib.contextmanager
def count_syncs() -> Iterator[list[str]]:
    """Records every host-device synchronisation PyTorch makes inside the block (CUDA's sync
    debug mode); yields the list that gets one entry per synchronisation: its Python call
    stack, innermost frame last, as "file:line in function" lines (empty without CUDA)."""
    caught: list[str] = []
    if not torch.cuda.is_available():
        yield caught
        return

    show = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            show(message, category, filename, lineno, file, line)
        else:
            frames = [f for f in traceback.extract_stack()[:-1]  # without this function
                      if not f.filename.endswith("warnings.py")]
            if frames and frames[-1].name == "set_sync_debug_mode":
                return  # switching the debug mode itself is reported as one
            caught.append("\n".join(f"{f.filename}:{f.lineno} in {f.name}"
                                     for f in frames[-12:]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def sync_sites(stacks: list[str]) -> list[str]:
    """Each distinct synchronising stack of `count_syncs` once, with its count, most first."""
    counts: dict[str, int] = {}
    for stack in stacks:
        counts[stack] = counts.get(stack, 0) + 1
    return [f"{n} x\n{stack}" for stack, n in sorted(counts.items(), key=lambda kv: -kv[1])]
