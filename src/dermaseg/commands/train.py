"""`dermaseg train`: train a model from a YAML recipe on a prepared dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from dermaseg.errors import UsageError


def _resolve_config(config: Path | None, out: Path, overrides: list[str], resume: bool):
    """The run's config: the recipe + overrides, or (--resume) the run's saved config."""
    from dermaseg.config_io import load_config
    from dermaseg.recipes import recipe_path
    from dermaseg.train.run_folder import check_resume_config, load_run_config

    if config is not None:
        config = recipe_path(config, "--config")
    if resume:
        resolved = load_run_config(out, overrides)
        if config is not None:
            check_resume_config(load_config(config, overrides), resolved, out)
        return resolved
    if config is None:
        raise UsageError("--config: a recipe is needed: a YAML file or a shipped recipe's name "
                         "(e.g. --config cpu_small; `dermaseg recipes list`)")
    return load_config(config, overrides)


def _with_options(overrides: list[str], minutes: float | None, fold: int | None) -> list[str]:
    """--set overrides plus those --minutes (train.max_minutes) and --fold (data.fold) mean."""
    if minutes is not None:
        if not (math.isfinite(minutes) and minutes > 0):
            raise UsageError(f"--minutes {minutes} (train.max_minutes): must be > 0")
        overrides = [*overrides, f"train.max_minutes={minutes}"]
    if fold is not None:
        if fold < 0:
            raise UsageError(f"--fold {fold}: must be 0 or more (a fold of `dermaseg data "
                             "prepare --folds K`: 0..K-1)")
        overrides = [*overrides, f"data.fold={fold}"]
    return overrides


def _with_trackers(overrides: list[str], loggers: list[str], tracking_uri: str | None,
                   config) -> list[str]:
    """--set overrides plus those --logger (added to train.loggers) and --tracking-uri mean."""
    from dermaseg.train.tracking import TRACKERS

    for name in loggers:
        if name not in TRACKERS:
            raise UsageError(f"--logger {name}: use {', '.join(TRACKERS)}")
    if loggers:
        names = list(dict.fromkeys([*config.train.loggers, *loggers]))
        overrides = [*overrides, f"train.loggers=[{', '.join(names)}]"]
    if tracking_uri is not None:
        overrides = [*overrides, f"train.tracking_uri={json.dumps(tracking_uri)}"]
    return overrides


def train(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Recipe: a YAML file or a shipped recipe's name "
        "(`dermaseg recipes list`); optional with --resume."),
    data: Path = typer.Option(..., "--data", "-d",
                              help="Folder written by `dermaseg data prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, curves, ...)."),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: section.key=value (repeatable)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out from its last.ckpt."),
    devices: str | None = typer.Option(
        None, "--devices", help="GPUs (or CPU processes) on this machine; >1 trains with DDP."),
    num_nodes: int | None = typer.Option(
        None, "--num-nodes", help="Machines taking part in DDP (same command on each)."),
    minutes: float | None = typer.Option(
        None, "--minutes", help="Training time budget in minutes (sets train.max_minutes)."),
    fold: int | None = typer.Option(
        None, "--fold", help="Cross-validation: validate on fold K of a dataset prepared with "
        "--folds, train on the other folds (sets data.fold)."),
    loggers: list[str] = typer.Option(
        [], "--logger", help="Also send the run to an experiment tracker: tensorboard, mlflow "
        "or wandb (repeatable; adds to train.loggers)."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: a local store in "
        "OUT/mlruns/; sets train.tracking_uri)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train DeepLab-v3 on a prepared dataset.

    Writes config.yaml, best.ckpt, last.ckpt, metrics.csv, curves.png and summary.json.

    --resume continues from --out/last.ckpt with the run's saved config (--set still applies).

    --minutes 5 stops after the last epoch that fits in 5 minutes (best.ckpt is kept).

    --fold 2 trains on folds 0, 1, 3, 4 of `data prepare --folds 5` and validates on fold 2;
    `dermaseg cv-summary` then reads the fold runs.

    --logger tensorboard (or mlflow, wandb) also sends the config, each epoch's metrics and the
    run's curves and summary to that tracker (OUT/tensorboard/, OUT/mlruns/, OUT/wandb/).

    Several GPUs: --devices 4 (DDP); several machines: --num-nodes 2 on each machine.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from dermaseg.train.runner import train as run_training

    overrides = _with_options(overrides, minutes, fold)
    resolved = _resolve_config(config, out, overrides, resume)
    if loggers or tracking_uri is not None:
        overrides = _with_trackers(overrides, loggers, tracking_uri, resolved)
        resolved = _resolve_config(config, out, overrides, resume)
    summary = run_training(resolved, data, out, resume=resume, devices=devices,
                           num_nodes=num_nodes, progress=not quiet)
    if rank_zero_only.rank != 0:  # DDP: one report, from rank 0
        return
    best = summary.get("best", {})
    typer.echo(json.dumps({"run": str(out), "fold": summary.get("fold"),
                           "best_epoch": summary.get("best_epoch"),
                           "val_dice": best.get("val_dice"), "val_iou": best.get("val_iou"),
                           "epochs": summary.get("epochs"),
                           "stopped_by": summary.get("stopped_by")}))


def cv_summary(
    runs: list[Path] = typer.Argument(..., help="Run folders of `dermaseg train --fold K`."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result as JSON here."),
) -> None:
    """Cross-validation result: each fold's best val Dice/IoU and epoch, then mean ± std.

    Refuses runs trained on different prepared data or with configs that differ in more than
    data.fold (the field is named), and a fold given twice.
    """
    from dermaseg.fileio import write_json_atomic
    from dermaseg.train.crossval import cv_lines
    from dermaseg.train.crossval import cv_summary as summarise_folds

    result = summarise_folds(runs)
    typer.echo("\n".join(cv_lines(result)))
    if out is not None:
        write_json_atomic(out, result)
        typer.echo(f"wrote {out}")
