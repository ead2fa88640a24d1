"""Training progress: Lightning's bar in a terminal, with the loss read without a per-step
sync; plain lines in a log file (one per epoch, with its metrics, and the time budget's
standing instead of `max_epochs` when the run has one)."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from dermaseg.train.callbacks import TimeBudget, trainer_callbacks
from dermaseg.train.history import History


class TimedLossBar(TQDMProgressBar):
    """Lightning's progress bar with the training loss, read from the GPU at most once a
    second (reading it at every step would make the CPU wait for the GPU at every step)."""

    def __init__(self) -> None:
        super().__init__()
        self._loss: float | None = None
        self._read_at = 0.0

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("loss")
        if loss is not None and time.monotonic() - self._read_at >= 1.0:
            self._loss, self._read_at = float(loss), time.monotonic()
        if self._loss is not None:
            metrics["loss"] = round(self._loss, 4)
        return metrics


class ProgressLines(Callback):
    """Progress for output that is not a terminal (a log file, a batch job), where the
    progress bar shows nothing until the run ends: one line per epoch with its metrics, and
    inside a long epoch a line every `every_s` seconds. Epochs are numbered from 0, as in
    metrics.csv and summary.json; a validated epoch's line shows its metrics.csv row (the
    epoch's mean training loss and its learning rate)."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._epoch_start = self._last_line = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._last_line = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._last_line < self.every_s:
            return
        self._last_line = time.monotonic()
        loss = trainer.callback_metrics.get("loss")  # read only here: no per-step sync
        rank_zero_info(f"{self._epoch(trainer)}: batch {batch_idx + 1}/"
                       f"{trainer.num_training_batches}"
                       + (f", batch loss {float(loss):.4f}" if loss is not None else ""))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = _history_row(trainer)
        if row is not None:
            names = ("train_loss", "val_loss", "val_dice", "val_iou")
            parts = [f"{name.removeprefix('train_')} {row[name]:.4f}" for name in names
                     if name in row]
            lr = row.get("lr")
        else:  # not validated (train.val_every > 1): no row yet, the last batch's loss
            loss = trainer.callback_metrics.get("loss")
            parts = [f"last batch loss {float(loss):.4f}"] if loss is not None else []
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        if self._epoch_start:  # else an epoch resumed after its last batch: no time of its own
            parts.append(f"{time.monotonic() - self._epoch_start:.0f} s")
        rank_zero_info(f"{self._epoch(trainer, epoch_end=True)}: {', '.join(parts)}")

    @staticmethod
    def _epoch(trainer, epoch_end: bool = False) -> str:
        """"epoch 12/199" (numbered from 0; of max_epochs); under a time budget, which
        stops the run long before max_epochs, the budget: "epoch 12 (time budget 18 min, 7.5
        min left, ~8 more epochs)"."""
        budget = next((cb for cb in trainer_callbacks(trainer) if isinstance(cb, TimeBudget)),
                      None)
        if budget is None:
            return f"epoch {trainer.current_epoch}/{trainer.max_epochs - 1}"
        return f"epoch {trainer.current_epoch} ({budget.words(trainer, epoch_end)})"


def _history_row(trainer) -> dict | None:
    """This epoch's metrics.csv row (History's), once its validation has run; else None."""
    history = next((cb for cb in trainer.callbacks if isinstance(cb, History)), None)
    if history is not None and history.rows and \
            history.rows[-1]["epoch"] == trainer.current_epoch:
        return history.rows[-1]
    return None
