"""Where a training run's seconds go: summary.json's "time".

`TimeSplit` measures, with `time.perf_counter`, the training steps (each batch's start to its
end: forward, backward, optimiser step and the batch hooks), the validation (its start to its
end), the checkpoint writing (every `trainer.save_checkpoint`: best.ckpt and last.ckpt; on a
GPU the snapshot and hand-off to the background writer, `callbacks.BackgroundCheckpointIO`), the
drawing of curves.png (`History`), and calls the rest "other": fetching batches between the
steps, the other callbacks, logging, metrics.csv, the set-up before the first step. The parts
are exclusive (a checkpoint written inside the validation counts as checkpoint time only), so
they add up to the total.

On a GPU the host runs ahead of the device, so a part measured on the host can end before its
work does. The clock synchronises with the device only at epoch boundaries (after the epoch's
last step, at the end of the validation), never per step: a synchronisation per step would
slow the run it measures. Within an epoch, the training step's own synchronisation (the
non-finite-loss guard reads the loss) keeps the step times close to the device's.

A resumed run's summary counts the session since the resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

PARTS = ("steps", "validation", "checkpoints", "curves")


class TimeSplit(Callback):
    """Seconds per part of the run (`PARTS`, exclusive of each other); `as_dict(total)` adds
    "other" (the rest of `total`) and each part's fraction of it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self._open: list[list[Any]] = []  # [part, since]: the innermost part last
        self._save: Callable[..., None] | None = None

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the time inside the block as `name` (not as the part it interrupts)."""
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def begin(self, name: str) -> None:
        now = time.perf_counter()
        if self._open:  # the interrupted part stops counting until this one ends
            self._credit(now)
        self._open.append([name, now])

    def end(self, name: str) -> None:
        if not any(open_name == name for open_name, _ in self._open):
            return  # never begun (e.g. a run resumed in the middle of it)
        now = time.perf_counter()
        while self._open:  # parts left open inside it (an exception) end with it
            self._credit(now)
            if self._open.pop()[0] == name:
                break
            self._open[-1][1] = now  # the outer part was paused while the inner one ran
        if self._open:
            self._open[-1][1] = now  # the interrupted part counts again from now

    def _credit(self, now: float) -> None:
        name, since = self._open[-1]
        self.seconds[name] += now - since
        self._open[-1][1] = now

    def as_dict(self, total: float) -> dict[str, Any]:
        """{"steps": s, "validation": s, "checkpoints": s, "curves": s, "other": s,
        "total": s, "fractions": {part: share of total}}, seconds rounded to ms."""
        parts: dict[str, float] = dict(self.seconds)
        parts["other"] = max(0.0, total - sum(parts.values()))
        fractions = {k: round(v / total, 4) if total > 0 else 0.0 for k, v in parts.items()}
        return {**{k: round(v, 3) for k, v in parts.items()}, "total": round(total, 3),
                "fractions": fractions}

    # Lightning hooks -------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Time every checkpoint save: ModelCheckpoint (best.ckpt) and LastCheckpoint call
        `trainer.save_checkpoint`, which gathers the state and writes the file."""
        if self._save is not None:
            return
        self._save = save = trainer.save_checkpoint

        def timed_save(*args: Any, **kwargs: Any) -> None:
            with self.part("checkpoints"):
                save(*args, **kwargs)

        trainer.save_checkpoint = timed_save  # type: ignore[method-assign]

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._save is not None:
            trainer.save_checkpoint = self._save  # type: ignore[method-assign]
            self._save = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.begin("steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            _synchronize(pl_module)  # the epoch's last step: its device work belongs here
        self.end("steps")

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.begin("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            _synchronize(pl_module)
            self.end("validation")


def _synchronize(pl_module: L.LightningModule) -> None:
    """Wait for the device (CUDA only): called at epoch boundaries alone."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
