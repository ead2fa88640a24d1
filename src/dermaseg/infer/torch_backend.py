"""A PyTorch checkpoint in use: the device it runs on and the call the Predictor makes.

Imported only for `.ckpt` models, so that ONNX inference never loads PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch

from dermaseg.errors import UsageError
from dermaseg.infer.onnx_backend import local_rank


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> a CUDA GPU when there is one (under torchrun, LOCAL_RANK's), else the CPU.

    Raises:
        UsageError: a CUDA device was asked for on a machine without one.
    """
    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device}: not a device name (cpu, cuda, cuda:1 ...)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available on this machine")
    return resolved


class TorchBackend:
    """A PyTorch model: float32 (N, 3, H, W) numpy -> logits (N, 1, H, W) numpy. `precision`:
    its weights' float type (bf16, fp16 or fp32)."""

    fixed_side: int | None = None
    max_batch: int | None = None

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        dtype = next(self.model.parameters(), torch.empty(0)).dtype
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
        logits = self.model(inputs)
        if isinstance(logits, dict):  # with an edge head: {"mask": ..., "edge": ...}
            logits = logits["mask"]
        return logits.float().cpu().numpy()
