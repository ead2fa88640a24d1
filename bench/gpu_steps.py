"""The GPU benchmark's training step, in each mode, and its timing (`bench/gpu_bench.py`)."""

from __future__ import annotations

import time

import torch

from dermaseg.upload import count_syncs

# bf16_cl_compile: torch.compile's default mode; bf16_cl_graphs: mode="reduce-overhead", the
# model's kernels replayed as CUDA graphs.
COMPILE_MODES = {"bf16_cl_compile": "default", "bf16_cl_graphs": "reduce-overhead"}


def device_for(smoke: bool) -> torch.device:
    return torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_fn(config, device: torch.device, mode: str):
    """A training step (forward, Dice+BCE, backward, Adam as training builds it: fused on a
    GPU) of the recipe's model in `mode`."""
    from dermaseg.models.factory import build_model
    from dermaseg.train.losses import SegmentationLoss
    from dermaseg.train.module import build_optimizer

    if mode == "fp32_strict":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model(config.model).to(device).train()
    channels_last = mode.startswith("bf16")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, mode=COMPILE_MODES[mode]) if mode in COMPILE_MODES else model
    criterion = SegmentationLoss(config.loss)
    optimizer = build_optimizer(config.optim, model)

    def step(images: torch.Tensor, masks: torch.Tensor) -> None:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=channels_last):
            loss, _ = criterion(forward(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, batches, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps drawn from the iterator `batches`."""
    if steps <= 0:
        return 0.0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    synchronize(device)
    return (time.perf_counter() - start) / steps


def fixed_batches(config, device: torch.device):
    size, batch = config.data.image_size, config.data.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    while True:
        yield images, masks


def syncs_per_step(step, batches, device: torch.device, steps: int = 3) -> float | None:
    """Host-device synchronisations per step (batch hooks, augmentation and training step):
    each one makes the CPU wait for the GPU's queue to drain, leaving the GPU idle while the
    CPU then prepares the next work."""
    if device.type != "cuda":
        return None
    with count_syncs() as syncs:
        for _ in range(steps):
            step(*next(batches))
    return len(syncs) / steps
