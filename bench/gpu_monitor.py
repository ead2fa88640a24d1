"""What the GPU benchmark's training stage watches (`bench/gpu_bench.py`): NVML's GPU
utilisation sampled in a thread, and Lightning's training iterations timed."""

from __future__ import annotations

import statistics
import threading
import time

import lightning as L
import torch


class UtilizationSampler:
    """NVML's GPU utilisation (the share of time a kernel was running) sampled every 0.2 s in a
    thread while the block runs, each sample tagged with `phase` at that moment."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples = device, []
        self.phase = "other"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append((self.phase, torch.cuda.utilization(self.device)))
            except Exception:  # no NVML (pynvml missing or refused): no figure, not a failure
                return

    def __enter__(self) -> UtilizationSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean_percent(self, phase: str | None = None) -> float | None:
        """Mean of the samples (of `phase` only, when given); None without samples."""
        values = [value for tag, value in self.samples if phase in (None, tag)]
        return sum(values) / len(values) if values else None


class TrainingPhase(L.Callback):
    """Tags the sampler's samples "steps" while training batches run, from the second epoch
    on (the first one compiles, with `train.compile`); "other" for start-up, validation and
    checkpoints. Times Lightning's training iterations from the second epoch on: from one
    batch's start to the next one's within an epoch (the guard's one sync per step keeps the
    host in step with the GPU), so `step_ms()` is the step as Lightning runs it, epoch ends
    left out."""

    def __init__(self, sampler: UtilizationSampler) -> None:
        self.sampler = sampler
        self.step_seconds: list[float] = []
        self._last_start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.sampler.phase = "steps" if trainer.current_epoch >= 1 else "other"
        self._last_start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_start is not None and trainer.current_epoch >= 1:
            self.step_seconds.append(now - self._last_start)
        self._last_start = now

    def step_ms(self) -> float | None:
        """Median training iteration in milliseconds; None before a second epoch."""
        return 1000 * statistics.median(self.step_seconds) if self.step_seconds else None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.sampler.phase = "other"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sampler.phase = "other"
