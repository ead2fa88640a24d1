"""`dermaseg demo`: the whole pipeline on synthetic data (or `--data DIR`), on CPU."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for everything made."),
    data: Path | None = typer.Option(
        None, "--data", help="Run on your own image/mask folder instead of synthetic data."),
    images: int = typer.Option(160, "--images", "-n", help="Synthetic pairs to generate."),
    minutes: float = typer.Option(4.0, "--minutes", help="Training time budget."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, split and training."),
) -> None:
    """Generate (or read) data, check, prepare, train, evaluate, predict and export to ONNX."""
    from dermaseg.demo import run_demo

    result = run_demo(out, data, images=images, minutes=minutes, seed=seed, say=typer.echo)
    for line in result.lines:
        typer.echo(line)
    typer.secho(f"synthetic-test Dice: {result.test_dice:.4f}" if data is None
                else f"test Dice: {result.test_dice:.4f}", bold=True)
