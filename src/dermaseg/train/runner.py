"""`train(config, data_dir, out_dir)`: one training run, from a Config to a run folder.

RUN_DIR receives config.yaml (resolved), best.ckpt (highest val Dice; weights and metadata),
last.ckpt (the whole state for --resume: at epoch ends and every `train.checkpoint_every_steps`
steps, at most once per `train.checkpoint_every_minutes`, and at the end), metrics.csv,
curves.png and summary.json; with `train.loggers`, also what those trackers write
(`dermaseg.train.tracking`).

Precision: `train.precision=auto` is bf16 autocast on CUDA, fp32 on CPU; channels_last
applies on GPU; `torch.compile` (`train.compile`) wherever it is asked for (made for a GPU).

Several GPUs / machines (DDP): `devices=4` trains on 4 GPUs of this machine, one process each
(the command is relaunched per GPU); `num_nodes=2` with `devices=4` expects the same command on
2 machines, each with MASTER_ADDR, MASTER_PORT, NODE_RANK (0, 1) and WORLD_SIZE=8 set (or a
SLURM/torchrun environment, detected by Lightning). `data.batch_size` is per process.

Resume: `resume=True` continues from RUN_DIR/last.ckpt with optimiser, scheduler, early stopping,
callback and RNG state; see `dermaseg.train.datamodule` for why the data order matches.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only

from dermaseg.config import Config
from dermaseg.config_io import save_config
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import write_json_atomic
from dermaseg.output_lock import output_lock
from dermaseg.train.averaging import WeightAverage
from dermaseg.train.callbacks import (
    AtomicCheckpointIO,
    BackgroundCheckpointIO,
    LastCheckpoint,
    LateFreeze,
    TimeBudget,
    trainer_callbacks,
)
from dermaseg.train.datamodule import SegmentationDataModule
from dermaseg.train.history import History, summarize
from dermaseg.train.module import SegmentationModule
from dermaseg.train.pace import Pace
from dermaseg.train.progress_lines import ProgressLines, TimedLossBar
from dermaseg.train.quality_fit import fit_run_quality
from dermaseg.train.run_folder import (
    DATA_RECORD,
    check_resume_config,
    check_run_paths,
    data_identity,
    load_run_config,
)
from dermaseg.train.timing import TimeSplit
from dermaseg.train.tracking import Tracking, build_loggers, check_trackers, log_outcome

LightningPrecision = Literal["32-true", "bf16-mixed", "16-mixed"]
PRECISIONS: dict[str, LightningPrecision] = {"32": "32-true", "bf16": "bf16-mixed",
                                             "16": "16-mixed"}


# Lightning's info lines that say nothing about this run. Our own progress lines go through
# the same logger (rank_zero_info), so these are dropped by their words, not by level; its
# warnings (e.g. "GPU available but not used") go through `warnings` and stay.
_NOISE = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "IPU available:")


class _DropLightningNoise(logging.Filter):
    """Drops the "Tip: try installing litlogger" and "GPU/TPU/HPU available" info lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return record.levelno >= logging.WARNING or not any(words in message
                                                             for words in _NOISE)


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropLightningNoise())
# "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]" at every GPU run's start; its only info line
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


def resolve_precision(value: str, on_gpu: bool) -> LightningPrecision:
    """Config precision -> Lightning's: auto = bf16-mixed on CUDA (16-mixed without bf16)."""
    if value == "auto":
        if not on_gpu:
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if value not in PRECISIONS:
        raise DermasegError(f"train.precision: must be auto, 32, bf16 or 16, got {value!r}")
    if value == "16" and not on_gpu:
        raise DermasegError("train.precision=16 needs a GPU; use 32 or bf16 on CPU")
    return PRECISIONS[value]


def resolve_devices(value: str | int | None) -> tuple[int | str, int]:
    """(devices for the Trainer, how many processes that means on this machine)."""
    if value in (None, "auto"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 1
        return "auto", max(1, count)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--devices: expected a number or 'auto', got {value!r}") from None
    if count < 1:
        raise UsageError(f"--devices: must be >= 1, got {count}")
    return count, count


def build_callbacks(config: Config, out_dir: Path) -> list[Callback]:
    t = config.train
    split = TimeSplit()  # summary.json's "time"; History times its drawings with it
    callbacks: list[Callback] = [
        History(out_dir, timed=split.part),
        split,
        EarlyStopping(monitor="val_loss", mode="min", patience=t.early_stop_patience,
                      check_on_train_epoch_end=False),
        LateFreeze(t.freeze_backbone_epoch, t.freeze_after_lr_drops),
        # weights and ModelMeta only: a third of a full checkpoint (no optimizer state)
        ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val_dice", mode="max",
                        save_top_k=1, save_on_train_epoch_end=False, save_weights_only=True,
                        enable_version_counter=False, auto_insert_metric_name=False),
        LastCheckpoint(out_dir, t.checkpoint_every_steps, t.checkpoint_every_minutes),
    ]
    if t.ema_decay is not None:  # before the checkpoints: they save what it holds
        callbacks.insert(1, WeightAverage(t.ema_decay))
    if t.max_minutes is not None:
        callbacks.insert(1, TimeBudget(t.max_minutes, t.min_epochs))
    if t.loggers:  # after History: it sends the row History has just added
        callbacks.insert(1, Tracking(config, out_dir, callbacks[0]))
    return callbacks


def build_trainer(config: Config, out_dir: Path, devices: str | int | None = None,
                  num_nodes: int | None = None, callbacks: list[Callback] | None = None,
                  progress: bool = True, resume: bool = False) -> L.Trainer:
    """A Trainer for this config: precision, devices/DDP, callbacks, atomic checkpoints, the
    experiment trackers of train.loggers (continuing the run's own when `resume`).

    Raises:
        UsageError: bad --devices / --num-nodes, or a setup Lightning refuses.
    """
    devices_arg, count, nodes = resolve_processes(config, devices, num_nodes)
    try:
        return _trainer(config, out_dir, devices_arg, count, nodes, callbacks, progress,
                        build_loggers(config, out_dir, resume))
    except MisconfigurationException as exc:  # e.g. more devices asked than present
        raise UsageError(f"cannot set up training: {exc}") from exc


def resolve_processes(config: Config, devices: str | int | None,
                      num_nodes: int | None) -> tuple[int | str, int, int]:
    """(devices for the Trainer, processes per machine, machines) from the arguments, which
    override train.devices / train.num_nodes."""
    devices_arg, count = resolve_devices(devices if devices is not None else config.train.devices)
    nodes = num_nodes if num_nodes is not None else config.train.num_nodes
    if nodes < 1:
        raise UsageError(f"--num-nodes: must be >= 1, got {nodes}")
    return devices_arg, count, nodes


def _strategy(config: Config, processes: int) -> str | DDPStrategy:
    """DDP when several processes train. DDP fails on parameters that get no gradient in a
    step unless told to look for them: a backbone frozen mid-run, or an edge head whose
    output no loss term uses."""
    if processes == 1:
        return "auto"
    unused = (config.train.freeze_backbone_epoch is not None
              or config.train.freeze_after_lr_drops is not None
              or (config.model.edge_head and config.loss.boundary == 0))
    return DDPStrategy(find_unused_parameters=True) if unused else "ddp"


def _trainer(config: Config, out_dir: Path, devices: int | str, count: int, nodes: int,
             callbacks: list[Callback] | None, progress: bool, loggers: list) -> L.Trainer:
    on_gpu = torch.cuda.is_available()
    if on_gpu:  # fp32 matmuls may use TF32, as cuDNN convolutions already do by default
        torch.set_float32_matmul_precision("high")
    bar = progress and sys.stderr.isatty()  # the bar draws nothing in a log file until the end
    lines = [TimedLossBar()] if bar else [ProgressLines()] if progress else []
    return L.Trainer(
        accelerator="auto", devices=devices, num_nodes=nodes,
        strategy=_strategy(config, count * nodes),
        precision=resolve_precision(config.train.precision, on_gpu),
        max_epochs=config.train.max_epochs, check_val_every_n_epoch=config.train.val_every,
        callbacks=build_callbacks(config, out_dir) + list(callbacks or []) + lines,
        plugins=[BackgroundCheckpointIO() if on_gpu else AtomicCheckpointIO()],
        logger=loggers or False, default_root_dir=out_dir,
        use_distributed_sampler=False, num_sanity_val_steps=0,
        enable_progress_bar=bar, enable_model_summary=False, log_every_n_steps=1,
        # cuDNN's benchmark mode stays off: on an H200 it made bf16 channels_last steps 1.7x
        # slower and took 20 GiB of workspace (bench/results/gpu_cudnn_benchmark.md).
        benchmark=False,
    )


def train(config: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
          resume: bool = False, devices: str | int | None = None, num_nodes: int | None = None,
          callbacks: list[Callback] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a model as `config` says on the prepared dataset `data_dir`; write RUN_DIR.

    Args:
        config: the resolved configuration (see `dermaseg.config`).
        data_dir: a folder written by `dermaseg data prepare`.
        out_dir: the run folder (created).
        resume: continue the run in `out_dir` from its last.ckpt.
        devices, num_nodes: override train.devices / train.num_nodes (DDP when > 1 process).
        callbacks: extra Lightning callbacks (tests, experiments).
        progress: show Lightning's progress bar.

    Returns:
        The summary also written to RUN_DIR/summary.json.

    Raises:
        UsageError: missing data folder, or a run folder in the wrong state for `resume`.
        DermasegError: invalid config values, unreadable data, non-finite losses, a damaged
            last.ckpt, or another process writing into `out_dir` (FolderBusy).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    # DDP: the processes Lightning starts for the other ranks write into the folder rank 0 holds
    locked = output_lock(out_dir, "training run") if rank_zero_only.rank == 0 else nullcontext()
    with locked:
        return _train(config, data_dir, out_dir, resume, devices, num_nodes, callbacks,
                      progress)


def _train(config: Config, data_dir: Path, out_dir: Path, resume: bool,
           devices: str | int | None, num_nodes: int | None, callbacks: list[Callback] | None,
           progress: bool) -> dict[str, Any]:
    ckpt_path = check_run_paths(data_dir, out_dir, resume)
    check_trackers(config.train.loggers)
    _, count, nodes = resolve_processes(config, devices, num_nodes)
    datamodule = SegmentationDataModule(config, data_dir, world_size=count * nodes)
    datamodule.setup("fit")  # bad data is refused before the run folder is written
    L.seed_everything(config.train.seed, verbose=False)
    module = SegmentationModule(config)
    if config.train.compile:  # eager, with a note, if compiling fails (train.compiled)
        module.compile_model(config.train.compile_mode)
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty")
    # Our sampler resumes mid-epoch itself (datamodule._position_for_resume).
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
    warnings.filterwarnings("ignore", message=".*overridden `on_(before|after)_batch_transfer`")
    # Lightning 2.6 calls a torch pytree API deprecated in torch 2.10: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if datamodule.gather_on_device:  # the loader yields indices alone: no workers needed
        warnings.filterwarnings("ignore", message="The 'train_dataloader' does not have many")
    trainer = build_trainer(config, out_dir, devices, num_nodes, callbacks, progress, resume)
    _notes(config, count)
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        if ckpt_path is None:
            write_json_atomic(out_dir / DATA_RECORD, data_identity(data_dir))
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    summary = _finish(trainer, config, out_dir, time.perf_counter() - start, data_dir)
    if trainer.is_global_zero and config.train.fit_quality:
        fitted = fit_run_quality(out_dir, data_dir, config, device=_device(trainer),
                                 progress=progress)
        if fitted is not None:
            summary["quality_estimate"] = fitted
            write_json_atomic(out_dir / "summary.json", summary)
    if trainer.is_global_zero and trainer.loggers:
        log_outcome(trainer.loggers, out_dir, summary)
    return summary


def _device(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    return "cpu" if device.type != "cuda" else str(device)


def _notes(config: Config, processes: int) -> None:
    """What a run would otherwise do without saying (rank 0 says it)."""
    if rank_zero_only.rank != 0:
        return
    if processes > 1 and not torch.cuda.is_available():
        print(f"note: no GPU here: {processes} processes train on the CPU (DDP over gloo), "
              f"sharing its {os.cpu_count()} cores", file=sys.stderr)
    if config.model.edge_head and config.loss.boundary == 0:
        print("note: model.edge_head is on but loss.boundary is 0: the edge head gets no "
              "training signal (set loss.boundary, e.g. 0.5)", file=sys.stderr)


def _stop_reason(trainer: L.Trainer) -> str:
    for callback in trainer_callbacks(trainer):
        if isinstance(callback, TimeBudget) and callback.stopped:
            return "time_budget"
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
            return "early_stopping"
    return "max_epochs"


def _finish(trainer: L.Trainer, config: Config, out_dir: Path, seconds: float,
            data_dir: Path) -> dict:
    history = next(cb for cb in trainer_callbacks(trainer) if isinstance(cb, History))
    summary = summarize(
        history.rows, stopped_by=_stop_reason(trainer), session_seconds=seconds,
        device=str(trainer.strategy.root_device), precision=str(trainer.precision),
        world_size=trainer.world_size, best_ckpt=str(out_dir / "best.ckpt"),
        last_ckpt=str(out_dir / "last.ckpt"), fold=config.data.fold,
        data=data_identity(data_dir),
    )
    # epochs trained, validated or not (metrics.csv has a row per validation: train.val_every)
    summary |= {"epochs": trainer.current_epoch, "last_epoch": trainer.current_epoch - 1}
    if (pace := _pace(trainer, config)) is not None:
        summary["pace"] = pace
    split = next((cb for cb in trainer_callbacks(trainer) if isinstance(cb, TimeSplit)), None)
    if split is not None:
        summary["time"] = split.as_dict(seconds)
    summary = _json_safe(summary)
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _pace(trainer: L.Trainer, config: Config) -> dict | None:
    """summary.json's "pace" of a run under a time budget (`dermaseg.train.pace`), with a
    note when the budget fitted fewer epochs than it should have (said on stderr too)."""
    budget = next((cb for cb in trainer_callbacks(trainer) if isinstance(cb, TimeBudget)),
                  None)
    if budget is None or not budget.epoch_seconds:
        return None
    pace = Pace(config.train.max_minutes or 0.0, budget.epoch_seconds, budget.epochs_in_budget,
                config.train.expected_epoch_seconds, budget.loads,
                min_epochs=budget.min_epochs, minutes=round(budget.elapsed() / 60, 2))
    note = pace.note() if budget.stopped or budget.extended else None
    if note and trainer.is_global_zero:
        print(f"note: {note}", file=sys.stderr)
    return {**pace.as_dict(), "note": note}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["build_trainer", "check_resume_config", "load_run_config", "train"]
