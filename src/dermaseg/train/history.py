"""Per-epoch history of a run: `metrics.csv`, `curves.png` and the numbers of `summary.json`.

One row per validated epoch: epoch, train_loss, val_loss, val_dice, val_iou, the other
validation metrics, lr (at the start of the epoch), seconds (train + validation), minutes
(cumulative), train_seconds, images_per_s. The rows live in the checkpoint, so a resumed run
rewrites the file it would have written uninterrupted (rows after the restored point dropped).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from dermaseg.fileio import write_bytes_atomic

if TYPE_CHECKING:
    from dermaseg.train.module import SegmentationModule

PLOT_EVERY_S = 30.0  # curves.png at most this often while training (a drawing: ~0.4 s)
FIRST_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "val_iou"]
LAST_COLUMNS = ["lr", "seconds", "minutes", "train_seconds", "images_per_s"]


class History(Callback):
    """Collects one row per validated epoch and writes `metrics.csv` (every epoch) and
    `curves.png` (at most every `plot_every_s` seconds, and when training ends) in `out`;
    each drawing inside `timed("curves")` (`TimeSplit.part`: summary.json's "time")."""

    def __init__(self, out: str | Path, plot: bool = True,
                 plot_every_s: float = PLOT_EVERY_S,
                 timed: Callable[[str], AbstractContextManager] | None = None) -> None:
        self.out = Path(out)
        self.plot, self.plot_every_s = plot, plot_every_s
        self.timed = timed or (lambda name: nullcontext())
        self._plotted_at = -math.inf
        self.rows: list[dict[str, float]] = []
        self._epoch_start = self._train_end = 0.0
        self._images = 0
        self._lr = math.nan
        self._restored_lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch.
        self.on_train_epoch_start(trainer, pl_module)
        if self._restored_lr is not None:  # the LR at the start of that epoch, not now
            self._lr, self._restored_lr = self._restored_lr, None
        if trainer.is_global_zero and self.rows:
            self._write()  # drop rows written after the checkpoint we resumed from

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.monotonic()
        self._images = 0
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += int(batch[0].shape[0]) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._train_end = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: SegmentationModule) -> None:
        if trainer.sanity_checking:
            return
        now = time.monotonic()
        train_seconds = max(1e-9, self._train_end - self._epoch_start)
        row = {"epoch": trainer.current_epoch, "train_loss": pl_module.pop_train_loss()}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith("val_"):
                row[key] = float(value)
        seconds = now - self._epoch_start
        minutes = (self.rows[-1]["minutes"] if self.rows else 0.0) + seconds / 60.0
        row |= {"lr": self._lr, "seconds": seconds, "minutes": minutes,
                "train_seconds": train_seconds, "images_per_s": self._images / train_seconds}
        self.rows.append(row)
        if trainer.is_global_zero:
            self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.rows:
            self._write(final=True)

    def _write(self, final: bool = False) -> None:
        write_bytes_atomic(self.out / "metrics.csv", rows_to_csv(self.rows).encode())
        if self.plot and (final or time.monotonic() - self._plotted_at >= self.plot_every_s):
            with self.timed("curves"):
                write_bytes_atomic(self.out / "curves.png", plot_curves(self.rows))
            self._plotted_at = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows], "epoch_lr": self._lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict["rows"]]
        self._restored_lr = state_dict.get("epoch_lr")


def columns(rows: list[dict[str, float]]) -> list[str]:
    names = {key for row in rows for key in row}
    middle = sorted(names - set(FIRST_COLUMNS) - set(LAST_COLUMNS))
    return [c for c in FIRST_COLUMNS if c in names] + middle + [
        c for c in LAST_COLUMNS if c in names]


def rows_to_csv(rows: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def plot_curves(rows: list[dict[str, float]]) -> bytes:
    """PNG bytes: losses, val Dice/IoU, and learning rate against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in rows]  # 0-based, as in metrics.csv and summary.json

    def series(name: str) -> list[float]:
        return [row.get(name, math.nan) for row in rows]

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    axes[0].plot(epochs, series("train_loss"), "o-", ms=3, label="train")
    axes[0].plot(epochs, series("val_loss"), "o-", ms=3, label="val")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(epochs, series("val_dice"), "o-", ms=3, label="Dice")
    axes[1].plot(epochs, series("val_iou"), "o-", ms=3, label="IoU")
    best = max(range(len(rows)), key=lambda i: _finite(rows[i].get("val_dice")))
    axes[1].axvline(epochs[best], color="grey", ls=":", lw=1)
    axes[1].set(title=f"validation (best Dice {rows[best].get('val_dice', math.nan):.4f} "
                      f"at epoch {epochs[best]})", xlabel="epoch")
    axes[2].plot(epochs, series("lr"), "o-", ms=3, color="tab:green")
    axes[2].set(title="learning rate", xlabel="epoch", yscale="log")
    axes[3].plot(series("minutes"), series("val_dice"), "o-", ms=3, color="tab:purple")
    axes[3].set(title="val Dice against training time", xlabel="minutes")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def summarize(rows: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    """summary.json content: best epoch by val Dice, its metrics, time per epoch, images/s."""
    if not rows:
        return {"epochs": 0, **extra}
    best = max(rows, key=lambda row: _finite(row.get("val_dice")))
    seconds = [row["seconds"] for row in rows]
    return {
        "best_epoch": int(best["epoch"]),
        "best": {k: v for k, v in best.items() if k.startswith("val_")},
        "epochs": len(rows),
        "last_epoch": int(rows[-1]["epoch"]),
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
        "train_minutes": sum(seconds) / 60.0,
        **extra,
    }
