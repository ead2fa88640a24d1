"""`dermaseg train`: train a model from a YAML recipe on a prepared dataset."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dermaseg.errors import UsageError


def check_recipe(config: Path) -> None:
    """A missing recipe file: list the recipes beside it and suggest the closest name."""
    import difflib

    if config.is_file():
        return
    folder = config.parent if config.parent.is_dir() else None
    names = sorted(p.name for p in folder.glob("*.y*ml")) if folder else []
    message = f"--config {config}: no such recipe file"
    close = difflib.get_close_matches(config.name, names, n=1, cutoff=0.5)
    if close:
        message += f"; did you mean {folder / close[0]}?"
    if names:
        message += f" (recipes in {folder}: {', '.join(names)})"
    else:
        message += " (the recipes are in the repository's configs/ folder)"
    raise UsageError(message)


def _resolve_config(config: Path | None, out: Path, overrides: list[str], resume: bool):
    """The run's config: the recipe + overrides, or (--resume) the run's saved config."""
    from dermaseg.config import load_config
    from dermaseg.train.runner import check_resume_config, load_run_config

    if config is not None:
        check_recipe(config)
    if resume:
        resolved = load_run_config(out, overrides)
        if config is not None:
            check_resume_config(load_config(config, overrides), resolved, out)
        return resolved
    if config is None:
        raise UsageError("--config: a recipe is needed (e.g. configs/cpu_small.yaml)")
    return load_config(config, overrides)


def train(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML recipe (configs/*.yaml); optional with --resume."),
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train DeepLab-v3 on a prepared dataset.

    Writes config.yaml, best.ckpt, last.ckpt, metrics.csv, curves.png and summary.json.

    --resume continues from --out/last.ckpt with the run's saved config (--set still applies).

    --minutes 5 stops after the last epoch that fits in 5 minutes (best.ckpt is kept).

    Several GPUs: --devices 4 (DDP); several machines: --num-nodes 2 on each machine.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from dermaseg.train.runner import train as run_training

    if minutes is not None:
        overrides = [*overrides, f"train.max_minutes={minutes}"]
    resolved = _resolve_config(config, out, overrides, resume)
    summary = run_training(resolved, data, out, resume=resume, devices=devices,
                           num_nodes=num_nodes, progress=not quiet)
    if rank_zero_only.rank != 0:  # DDP: one report, from rank 0
        return
    best = summary.get("best", {})
    typer.echo(json.dumps({"run": str(out), "best_epoch": summary.get("best_epoch"),
                           "val_dice": best.get("val_dice"), "val_iou": best.get("val_iou"),
                           "epochs": summary.get("epochs"),
                           "stopped_by": summary.get("stopped_by")}))
