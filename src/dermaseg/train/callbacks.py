"""What Lightning lacks: late backbone freezing, a time budget that finishes whole epochs, a
non-finite-loss guard, `last.ckpt` every N steps and every epoch (at most once per interval),
atomic checkpoint files (written in a background thread on a GPU) and a counter of host-device
syncs (GPU runs). Progress output (the bar, or plain lines in a log file) is in
`dermaseg.train.progress_lines`.

Every callback keeps its state in the checkpoint (`state_dict`), so a resumed run behaves as
the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from dermaseg.errors import DermasegError
from dermaseg.train.pace import budget_words, load_average
from dermaseg.upload import count_syncs

if TYPE_CHECKING:
    from dermaseg.train.module import SegmentationModule


def trainer_callbacks(trainer: L.Trainer) -> list[Callback]:
    """`trainer.callbacks`: Lightning assigns it outside the Trainer class, unseen by pyright."""
    return trainer.callbacks  # pyright: ignore[reportAttributeAccessIssue]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file, then rename: a kill never leaves half a file.

    Reading uses `torch.load(weights_only=True)`: a checkpoint cannot run code when resumed.
    """

    def __init__(self, check_finite: bool = True) -> None:
        super().__init__()
        self.check_finite = check_finite

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        from dermaseg.checkpoint import torch_save_atomic

        if not self.check_finite or weights_finite(checkpoint, path):
            torch_save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        from dermaseg.checkpoint import read_checkpoint

        return read_checkpoint(path)


def weights_finite(checkpoint: dict[str, Any], path) -> bool:
    """Whether the checkpoint's floating-point weights are all finite; warns, naming `path`, when
    not (the earlier file is then kept)."""
    weights = [v for v in checkpoint.get("state_dict", {}).values()
               if torch.is_tensor(v) and v.is_floating_point()]
    if weights and not bool(torch.stack([torch.isfinite(v).all() for v in weights]).all()):
        rank_zero_warn(f"{path}: not written: the weights are no longer finite (NaN/inf, "
                       "an exploding step); the earlier file is kept")
        return False
    return True


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Checkpoints written in a background thread, so that a GPU keeps training while the file
    is serialised and written (a DeepLab-v3+ ResNet-50's best.ckpt: 160 MB, last.ckpt with
    Adam's moments: 480 MB).

    On the caller's thread the weights are checked finite (one synchronisation per checkpoint)
    and Lightning's AsyncCheckpointIO snapshots every tensor (a copy on the device), so later
    steps cannot change what is written; `AtomicCheckpointIO` writes the snapshot. At most
    `MAX_PENDING` snapshots wait (best.ckpt and last.ckpt of one validation): a further save
    first waits for the oldest, which bounds the GPU memory they hold when the disk is slow.
    Lightning waits for the last write when training ends (`teardown`); a failed write is
    raised at the next save or then.
    """

    MAX_PENDING = 2

    def __init__(self) -> None:
        super().__init__(AtomicCheckpointIO(check_finite=False))
        self._written: list[Future] = []  # done when the matching write has ended

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if not weights_finite(checkpoint, path):
            return
        while len(self._written) >= self.MAX_PENDING:
            self._written.pop(0).result()
        super().save_checkpoint(checkpoint, path, storage_options)
        executor = self._executor  # one worker: this runs after the write just submitted
        if executor is not None:
            self._written.append(executor.submit(lambda: None))

    def teardown(self) -> None:
        self._written.clear()
        super().teardown()


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` at the save points (every `every_n_steps` optimizer steps, every epoch's
    end) that come at least `every_minutes` after the previous save, and when training ends.
    Each save is a whole, consistent state, so a resume from any of them is exact; the
    interval bounds the work a crash loses and keeps short epochs (a GPU) from spending
    their time writing the optimizer's state.

    A ModelCheckpoint subclass so that Lightning runs it after the other callbacks (and after
    the best-checkpoint callback), and the file holds their updated state.
    """

    def __init__(self, dirpath, every_n_steps: int, every_minutes: float = 0.0) -> None:
        super().__init__(dirpath=dirpath, filename="last", save_top_k=0,
                         every_n_train_steps=every_n_steps, enable_version_counter=False)
        self.every_s = every_minutes * 60
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_at = time.monotonic()

    def _due(self, trainer: L.Trainer) -> bool:
        due = time.monotonic() - self._saved_at >= self.every_s
        if trainer.world_size > 1:  # one decision for every process: saving is collective
            due = trainer.strategy.broadcast(due)
        return due

    def _write(self, trainer: L.Trainer) -> None:
        self._save_checkpoint(trainer, self.last_path())
        self._saved_at = time.monotonic()

    def _save_last_now(self, trainer: L.Trainer, force: bool = False) -> None:
        if (force or self._due(trainer)) and not self._should_skip_saving_checkpoint(trainer):
            self._write(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Not after an epoch's last batch: resumed from there, Lightning would skip that
        # epoch's validation. The save after the validation (or at the epoch end) follows.
        n = self._every_n_train_steps
        last = batch_idx + 1 >= trainer.num_training_batches
        if n >= 1 and trainer.global_step % n == 0 and not last:
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.fit_loop.epoch_loop._should_check_val_epoch():
            self._save_last_now(trainer)  # epochs without validation

    def on_validation_end(self, trainer, pl_module) -> None:
        # Even if saved at this step before validation: the file must hold the epoch's
        # validation results (early stopping, best score, history row).
        if not trainer.sanity_checking and self._due(trainer):
            self._write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_last_now(trainer, force=True)  # the run's end, unless saved at this step

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._last_global_step_saved >= 0 and os.path.isfile(self.last_path()):
            rank_zero_info(f"stopped at step {trainer.global_step}; {self.last_path()} holds "
                           f"step {self._last_global_step_saved}: continue with --resume")

    def last_path(self) -> str:
        return self.format_checkpoint_name({}, "last")


class LateFreeze(Callback):
    """Freeze the backbone (train only ASPP + decoder) from epoch `epoch`, or once the plateau
    scheduler has cut the learning rate `after_drops` times.

    Args:
        epoch: first epoch (0-based) trained with a frozen backbone; None: not by epoch.
        after_drops: number of LR reductions that trigger the freeze; None: not by drops.
    """

    def __init__(self, epoch: int | None = None, after_drops: int | None = None) -> None:
        self.epoch, self.after_drops = epoch, after_drops
        self.frozen = False
        self.drops = 0
        self.last_lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: SegmentationModule) -> None:
        if self.frozen:  # resumed mid-epoch: no on_train_epoch_start for this epoch
            pl_module.model.freeze_backbone()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: SegmentationModule) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        if self.last_lr is not None and lr < self.last_lr * (1 - 1e-6):
            self.drops += 1
        self.last_lr = lr
        due = (self.epoch is not None and trainer.current_epoch >= self.epoch) or (
            self.after_drops is not None and self.drops >= self.after_drops)
        if due and not self.frozen:
            self.frozen = True
            rank_zero_info(f"epoch {trainer.current_epoch}: backbone frozen (after "
                           f"{self.drops} LR drops); training ASPP + decoder only")
        if self.frozen:  # again after a resume; idempotent
            pl_module.model.freeze_backbone()

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen, "drops": self.drops, "last_lr": self.last_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frozen = bool(state_dict["frozen"])
        self.drops = int(state_dict["drops"])
        self.last_lr = state_dict["last_lr"]


class TimeBudget(Callback):
    """Stop within `minutes` of training time (resumed runs count the time already spent),
    but not before `min_epochs` epochs are done.

    At the end of an epoch the run stops if the next epoch would not fit (judged by the last
    epoch's duration), so every epoch is complete and validated; mid-epoch it stops only when
    the budget is already spent. Each epoch's duration and the load average at its end are
    kept for `dermaseg.train.pace` (why fewer epochs fitted than expected).
    """

    def __init__(self, minutes: float, min_epochs: int = 0) -> None:
        self.budget = minutes * 60.0
        self.min_epochs = min_epochs
        self.spent = 0.0  # seconds, from earlier (interrupted) sessions of this run
        self.stopped = False
        self.epoch_seconds: list[float] = []
        self.loads: list[float] = []
        self.epochs_in_budget = 0
        self.extended = False  # training on past the budget, to min_epochs
        self._start = self._epoch_start = 0.0
        self._last_epoch = 0.0
        self._epochs_done = 0.0  # fractional, at the last batch
        self._said: list[str] = []  # said after the epoch's own progress line

    def elapsed(self) -> float:
        return self.spent + time.monotonic() - self._start

    def fraction_spent(self) -> float:
        """Share of the budget used so far (this process's clock); with `min_epochs`, the
        smaller of that and the share of min_epochs done, so that a schedule annealed by time
        ends where the run does."""
        spent = self.elapsed() / self.budget
        if self.min_epochs:
            spent = min(spent, self._epochs_done / self.min_epochs)
        return spent

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._epoch_start = time.monotonic()
        self._epochs_done = float(trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.monotonic()
        self._epochs_done = float(trainer.current_epoch)
        self._say_decided()

    def on_train_end(self, trainer, pl_module) -> None:
        self._say_decided()

    def _say_decided(self) -> None:
        """What was decided during an epoch, said once the epoch's own line is out."""
        for line in self._said:
            rank_zero_info(line)
        self._said.clear()

    def words(self, trainer: L.Trainer, epoch_end: bool) -> str:
        """The budget as the epoch's progress line shows it (`pace.budget_words`)."""
        more_by_max = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        return budget_words(self.budget, self.budget - self.elapsed(),
                            self._last_epoch if epoch_end else None,
                            last=trainer.should_stop or (epoch_end and more_by_max <= 0),
                            more_by_max=more_by_max,
                            short_of_min=self.min_epochs - trainer.current_epoch - 1)

    def _stop(self, trainer: L.Trainer, stop: bool, why: str) -> None:
        stop = trainer.strategy.broadcast(stop)
        if stop and not trainer.should_stop:
            self.stopped = trainer.should_stop = True
            self._said.append(f"time budget of {self.budget / 60:g} min: {why}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epochs_done = trainer.current_epoch + (batch_idx + 1) / max(
            1, trainer.num_training_batches)
        spent = self.elapsed() >= self.budget and trainer.current_epoch >= self.min_epochs
        self._stop(trainer, spent, "spent, stopping")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._last_epoch = time.monotonic() - self._epoch_start
        self.epoch_seconds.append(self._last_epoch)
        if (load := load_average()) is not None:
            self.loads.append(load)
        left = self.budget - self.elapsed()
        if left >= 0:
            self.epochs_in_budget = trainer.current_epoch + 1
        no_time = left < self._last_epoch
        if no_time and trainer.current_epoch + 1 < self.min_epochs:
            if not self.extended:
                self.extended = True
                self._said.append(f"time budget of {self.budget / 60:g} min: no time for "
                                  f"another epoch after {trainer.current_epoch + 1}; training "
                                  f"on to train.min_epochs={self.min_epochs}")
            return
        self._stop(trainer, no_time, "no time for another epoch, stopping")

    def state_dict(self) -> dict[str, Any]:
        return {"spent": self.elapsed() if self._start else self.spent, "stopped": self.stopped,
                "epoch_seconds": self.epoch_seconds, "loads": self.loads,
                "epochs_in_budget": self.epochs_in_budget}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.spent = float(state_dict["spent"])
        self.stopped = bool(state_dict["stopped"])
        # runs saved by earlier versions kept neither
        self.epoch_seconds = list(state_dict.get("epoch_seconds", []))
        self.loads = list(state_dict.get("loads", []))
        self.epochs_in_budget = int(state_dict.get("epochs_in_budget", 0))


class NonFiniteGuard:
    """Skip a training batch whose loss is NaN/inf, naming it; stop after `tolerance` in a row.

    Used by the LightningModule (a callback cannot skip a step). Under DDP every process skips
    when any one sees a non-finite loss, so the processes stay in step.
    """

    def __init__(self, tolerance: int = 3) -> None:
        self.tolerance = tolerance
        self.in_a_row = 0
        self.skipped = 0

    def should_skip(self, loss: torch.Tensor, parts: dict[str, torch.Tensor],
                    trainer: L.Trainer, batch_idx: int, items: Callable[[], list[str]]) -> bool:
        """True when this batch must be skipped (`items()`: the batch's image names). Reads
        the loss on the host: the training step's one host-device synchronisation.

        Raises:
            DermasegError: more than `tolerance` non-finite losses in a row.
        """
        bad = not bool(torch.isfinite(loss.detach()).item())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.skipped += 1
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        where = (f"non-finite loss ({values}) at epoch {trainer.current_epoch}, batch "
                 f"{batch_idx} (images: {', '.join(items())})")
        if self.in_a_row > self.tolerance:
            raise DermasegError(
                f"{where}; {self.in_a_row} batches in a row, stopping. Try a lower optim.lr, "
                "train.precision=32, or check these images")
        rank_zero_warn(f"{where}; batch skipped")
        return True


class SyncCounter(Callback):
    """Counts host-device synchronisations over `steps` whole training iterations (fetch,
    batch hooks, step, logging) after `skip` warm-up ones: `per_step` afterwards, and
    `stacks` where each happened (`dermaseg.upload.sync_sites` sums them up). A
    diagnostic for GPU runs (the GPU benchmark, the CUDA tests); nothing on CPU."""

    def __init__(self, skip: int = 2, steps: int = 3) -> None:
        self.skip, self.steps = skip, steps
        self.per_step: float | None = None
        self._counting: contextlib.ExitStack | None = None
        self.stacks: list[str] = []
        self._seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += 1
        if self._seen == self.skip and torch.cuda.is_available():
            self._counting = contextlib.ExitStack()
            self.stacks = self._counting.enter_context(count_syncs())
        elif self._seen == self.skip + self.steps and self._counting is not None:
            self._stop()

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()  # a run shorter than skip + steps iterations: no figure

    def _stop(self) -> None:
        if self._counting is None:
            return
        self._counting.close()
        counted = self._seen - self.skip
        if counted >= self.steps:
            self.per_step = len(self.stacks) / counted
        self._counting = None
