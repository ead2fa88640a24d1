"""Batch-size probe for `dermaseg plan`: real training steps on random inputs, and the rule
that picks a batch size from what they measured.

A probe step is what one optimiser step of `dermaseg train` costs on the device: the model of
the config (random weights: the throughput does not depend on them, and nothing is
downloaded), forward, the config's loss, backward and the config's optimiser, with the
precision and channels_last the runner would use. Not measured: data loading, augmentation and
validation (the plan keeps ~15 % of the time for those). `probe_compile` measures the same
step with the model through `torch.compile` (as `train.compile` runs it: `CompiledOrEager`,
eager when compiling fails), and what compiling costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from dermaseg.config import Config
from dermaseg.errors import DermasegError
from dermaseg.train.compiled import CompiledOrEager, one_line_error

GPU_BATCHES = (2, 4, 8, 16, 32, 64)
CPU_BATCHES = (2, 4, 8, 16)
MEMORY_LIMIT = 0.85  # largest share of GPU memory a chosen batch may use (peak allocated)
TOLERANCE = 0.05  # batches within 5 % of the best images/s count as equally fast
DATASET_SHARE = 0.05  # GPU: a batch holds at most 5 % of the training items (as nnU-Net)
CPU_DATASET_SHARE = 0.25  # CPU: at least 4 optimiser steps per epoch
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _cap_to_dataset(ok: list[Probe], items: int, share: float) -> tuple[list[Probe], str]:
    """The probes whose batch is at most `share` of `items` (always the smallest one), and
    what the cap removed ("" when nothing)."""
    cap = max(min(p.batch for p in ok), int(share * items))
    kept = [p for p in ok if p.batch <= cap]
    dropped = [p for p in ok if p.batch > cap]
    if not dropped:
        return ok, ""
    return kept, (f"batch {', '.join(str(p.batch) for p in dropped)} would give "
                  f"{items / dropped[0].batch:.1f} or fewer steps per epoch")


class Probe(NamedTuple):
    """One probed batch size: images/s of the timed steps, peak allocated GPU memory as a
    fraction of the device's (None off CUDA), and ok=False when it ran out of memory."""

    batch: int
    images_per_s: float
    peak_fraction: float | None
    ok: bool


def choose_batch(probes: list[Probe] | list[tuple], gpu: bool, items: int | None = None
                 ) -> tuple[int, str]:
    """The batch size to train with, and why.

    GPU: the largest batch whose peak memory is <= 85 % of the device's among those within 5 %
    of the best images/s (bigger batches: fewer, fuller steps); when all of those use more,
    the fastest batch that stays within 85 %; and no batch above 5 % of the `items` training
    items (at least the smallest probed), so that a small set still gets enough optimiser
    updates per epoch. CPU: the smallest batch within 5 % of the best images/s (more updates
    per epoch for the same time), and at most 25 % of the items (4 steps per epoch).

    Args:
        probes: (batch, images/s, peak_fraction or None, ok) per probed batch size.
        gpu: apply the GPU rule (else the CPU rule).
        items: training items per epoch (None: no cap).

    Raises:
        DermasegError: no batch size ran (the smallest was out of memory).
    """
    probes = [p if isinstance(p, Probe) else Probe(*p) for p in probes]
    ok = [p for p in probes if p.ok]
    if not ok:
        smallest = min((p.batch for p in probes), default=GPU_BATCHES[0])
        raise DermasegError(f"batch {smallest} does not fit in memory at this image size; "
                            "lower data.image_size or choose a smaller model (--base)")
    if items is not None:
        share = DATASET_SHARE if gpu else CPU_DATASET_SHARE
        ok, capped = _cap_to_dataset(ok, items, share)
        if capped:
            batch, reason = choose_batch(ok, gpu=gpu)
            return batch, (f"{reason}; at most {share * 100:g} % of the {items} training items "
                           f"({capped})")
    best = max(p.images_per_s for p in ok)
    near = [p for p in ok if p.images_per_s >= (1 - TOLERANCE) * best]
    if not gpu:
        pick = min(near, key=lambda p: p.batch)
        return pick.batch, (f"{pick.images_per_s:.1f} images/s, the smallest batch within 5 % "
                            f"of the best ({best:.1f}): more updates per epoch")
    fits = [p for p in ok if p.peak_fraction is None or p.peak_fraction <= MEMORY_LIMIT]
    near_fits = [p for p in near if p in fits]
    if near_fits:
        pick = max(near_fits, key=lambda p: p.batch)
        return pick.batch, (f"{pick.images_per_s:.1f} images/s, {_percent(pick.peak_fraction)}:"
                            " the largest batch within 5 % of the best "
                            f"({best:.1f}) using <= 85 % of GPU memory")
    if fits:
        pick = max(fits, key=lambda p: (p.images_per_s, p.batch))
        return pick.batch, (f"the faster batches need > 85 % of GPU memory; batch {pick.batch} "
                            f"({pick.images_per_s:.1f} images/s, "
                            f"{_percent(pick.peak_fraction)}) is the fastest that fits")
    pick = min(ok, key=lambda p: p.batch)
    return pick.batch, (f"every batch needs > 85 % of GPU memory; the smallest, {pick.batch}, "
                        "may run out of memory: lower data.image_size")


def _percent(fraction: float | None) -> str:
    return "memory not measured" if fraction is None else f"peak {fraction:.0%}"


def keep_probing(probes: list[Probe], gpu: bool) -> bool:
    """Whether to try the next larger batch: not after an out-of-memory error, nor (GPU) after
    a batch above 85 % of the memory, nor when the last one gained <= 5 % images/s."""
    last = probes[-1]
    if not last.ok or (gpu and last.peak_fraction is not None
                       and last.peak_fraction > MEMORY_LIMIT):
        return False
    earlier = [p.images_per_s for p in probes[:-1] if p.ok]
    return not earlier or last.images_per_s > (1 + TOLERANCE) * max(earlier)


class StepRunner:
    """Training steps of `config`'s model, loss and optimiser on `device` at
    `config.data.image_size`, on random inputs (N, 3, S, S) and 0/1 masks (N, 1, S, S).

    Raises:
        DermasegError: the config names an unknown model part or an unusable precision.
    """

    def __init__(self, config: Config, device: torch.device) -> None:
        from dermaseg.models.factory import build_model
        from dermaseg.train.losses import SegmentationLoss
        from dermaseg.train.module import build_optimizer
        from dermaseg.train.runner import resolve_precision

        self.device, self.size = device, config.data.image_size
        self.cuda = device.type == "cuda"
        if self.cuda:  # as the runner: fp32 matmuls may use TF32
            torch.set_float32_matmul_precision("high")
        model_config = config.model.updated(pretrained=None, weights=None)
        self.model = build_model(model_config).to(device).train()
        self.channels_last = self.cuda and config.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.criterion = SegmentationLoss(config.loss)
        self.optimizer = build_optimizer(config.optim, self.model)
        precision = resolve_precision(config.train.precision, self.cuda)
        self.dtype = AUTOCAST.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "16-mixed" else None
        self.compiled: CompiledOrEager | None = None  # set: the steps call the model through it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) if self.compiled is None else self.compiled(images)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        """One optimiser step on images (N, 3, S, S) and masks (N, 1, S, S)."""
        with self.autocast():
            total, _ = self.criterion(self.forward(images), masks)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random normalised images (batch, 3, S, S) and 0/1 masks (batch, 1, S, S)."""
        images = torch.randn(batch, 3, self.size, self.size, device=self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = (torch.rand(batch, 1, self.size, self.size, device=self.device) > 0.5).float()
        return images, masks

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def measure(self, batch: int, warmup: int, timed: int) -> Probe:
        """`warmup` untimed then `timed` timed steps at `batch`; an out-of-memory error gives
        Probe(ok=False) (the memory is freed first)."""
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds = None
        try:
            images, masks = self.inputs(batch)
            for _ in range(warmup):
                self.step(images, masks)
            self.sync()
            seconds = self._timed(images, masks, timed)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not _out_of_memory(exc):
                raise
        if seconds is None:  # the exception (and the frames holding tensors) is gone here
            images = masks = None
            self.optimizer.zero_grad(set_to_none=True)
            if self.cuda:
                torch.cuda.empty_cache()
            return Probe(batch, 0.0, None, False)
        return Probe(batch, batch / seconds, self._peak(), True)

    def validation_seconds(self, images: torch.Tensor) -> float:
        """Seconds of one validation call of the model on `images` (eval mode, no gradients,
        the training precision); the model is back in training mode after it."""
        self.model.eval()
        try:
            start = time.perf_counter()
            with torch.inference_mode(), self.autocast():
                self.forward(images)
            self.sync()
            return time.perf_counter() - start
        finally:
            self.model.train()

    def _timed(self, images: torch.Tensor, masks: torch.Tensor, steps: int) -> float:
        """Seconds per step: the mean of `steps` on CUDA (timed together, one sync); elsewhere
        the fastest single step, which a burst of other work on the CPU does not slow."""
        if self.cuda:
            start = time.perf_counter()
            for _ in range(steps):
                self.step(images, masks)
            self.sync()
            return (time.perf_counter() - start) / steps
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step(images, masks)
            self.sync()
            times.append(time.perf_counter() - start)
        return min(times)

    def _peak(self) -> float | None:
        if not self.cuda:
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory
        return torch.cuda.max_memory_allocated(self.device) / total


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def probe_batches(config: Config, device: torch.device, max_batch: int,
                  report: Callable[[str], None] = lambda line: None,
                  title: str = "") -> list[Probe]:
    """Measure training steps at growing batch sizes until one runs out of memory, uses more
    than 85 % of the GPU memory, or gains <= 5 % images/s over the best so far.

    GPU: batches 2..64, 3 warm-up + 5 timed steps each; CPU/MPS: 2..16, 1 warm-up + 2 timed
    (the first batch size: one more warm-up step).
    Batches above `max_batch` (the training items) are not tried, except 2.

    Returns:
        One Probe per batch size tried, in order; `report` gets `title` once the model is
        built (a bad config fails before it), then one line per batch.

    Raises:
        DermasegError: the config cannot build a model.
    """
    cuda = device.type == "cuda"
    runner = StepRunner(config, device)
    if title:
        report(title)
    candidates = [b for b in (GPU_BATCHES if cuda else CPU_BATCHES) if b <= max(2, max_batch)]
    warmup, timed = (3, 5) if cuda else (1, 2)
    probes: list[Probe] = []
    for index, batch in enumerate(candidates):
        # one more warm-up first: the first steps of a process also pay one-off costs
        probes.append(runner.measure(batch, warmup + (index == 0), timed))
        report(describe_probe(probes[-1]))
        if not keep_probing(probes, cuda):
            break
    return probes


def describe_probe(probe: Probe) -> str:
    """'batch 8: 41.2 images/s, peak 37 % of GPU memory' (or 'out of memory')."""
    if not probe.ok:
        return f"batch {probe.batch:>3}: out of memory"
    memory = "" if probe.peak_fraction is None else \
        f", peak {probe.peak_fraction:.0%} of GPU memory"
    return f"batch {probe.batch:>3}: {probe.images_per_s:.1f} images/s{memory}"


class CompileProbe(NamedTuple):
    """The compiled training step at `batch` in torch.compile's `mode`: seconds per step once
    compiled, and the seconds compiling added (the first training steps' excess over that,
    plus the first validation call's over the second); when compiling failed, `failed` says
    why (one line) and the times are None."""

    mode: str
    batch: int
    compiled_step_s: float | None
    compile_s: float | None
    validation_compile_s: float | None
    failed: str | None


def probe_compile(config: Config, device: torch.device, batch: int, mode: str) -> CompileProbe:
    """Compile the model as training does (`train.compile`, `compile_mode: mode`), then time
    warm-up and timed steps at `batch` (GPU: 3 + 5, the CUDA graphs recorded in the warm-up;
    elsewhere 1 + 2) and two validation calls at the validation batch
    (`config.data.validation_batch`; eval mode, no gradients). torch's compile caches
    (TORCHINDUCTOR_CACHE_DIR) serve a model compiled before: the time is what this run paid.

    A compilation that fails, whether torch.compile refuses or the compiled model's first
    calls do (no Triton, an unsupported operator, out of memory), is a CompileProbe with
    `failed`, not an error."""
    runner = StepRunner(config, device)
    try:
        probe = _compiled_steps(runner, batch, mode, config.data.validation_batch)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the plan says eager
        probe = CompileProbe(mode, batch, None, None, None, one_line_error(exc))
    cuda = runner.cuda
    del runner  # the compiled model, its CUDA graphs' memory
    if cuda:
        torch.cuda.empty_cache()
    return probe


def _compiled_steps(runner: StepRunner, batch: int, mode: str, val_batch: int) -> CompileProbe:
    """probe_compile's measurement (validation at `val_batch`, as training validates); raises
    what torch.compile or the compiled calls raise."""
    warmup, timed = (3, 5) if runner.cuda else (1, 2)
    runner.compiled = CompiledOrEager(runner.model, mode)
    images, masks = runner.inputs(batch)
    runner.sync()
    start = time.perf_counter()
    for _ in range(warmup):
        runner.step(images, masks)
    runner.sync()
    first = time.perf_counter() - start
    step_s = runner._timed(images, masks, timed)
    val_images = runner.inputs(val_batch)[0]
    validation = [runner.validation_seconds(val_images) for _ in range(2)]
    if runner.compiled.failed is not None:  # it fell back to eager
        return CompileProbe(mode, batch, None, None, None, runner.compiled.failed)
    extra = max(0.0, validation[0] - validation[1])
    return CompileProbe(mode, batch, step_s, max(0.0, first - warmup * step_s) + extra, extra,
                        None)


def describe_compile(probe: CompileProbe, eager_step_s: float) -> str:
    """'compiled: 41.0 ms/step against 112.0 ms eager, after 62 s compiling' (or why it
    failed)."""
    if probe.failed is not None or probe.compiled_step_s is None or probe.compile_s is None:
        return f"compile failed ({probe.failed}): eager"
    return (f"compiled: {probe.compiled_step_s * 1000:.1f} ms/step against "
            f"{eager_step_s * 1000:.1f} ms eager, after {probe.compile_s:.0f} s compiling")
