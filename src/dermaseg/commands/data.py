"""`dermaseg data ...`: synth, check, prepare, download."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dermaseg.errors import UsageError

app = typer.Typer(
    help="Find, check, prepare, synthesise and download datasets.", no_args_is_help=True
)


@app.command("check")
def check(
    folder: Path = typer.Argument(..., help="Dataset folder (ISIC, PH2 or flat layout)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of a table."),
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel processes (0: all cores)."),
) -> None:
    """Find every image/mask pair and report each problem with the file named.

    Exit code 0: no problem; 1: problems found; 2: usage error (missing folder).
    """
    from dermaseg.data.check import check_dataset

    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    report = check_dataset(folder, workers=workers or None, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.format_table())
    if not report.ok:
        raise typer.Exit(1)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """'6000x4000' -> (6000, 4000); None stays None."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--size must look like WIDTHxHEIGHT (e.g. 6000x4000), got {text!r}")
    return int(parts[0]), int(parts[1])


@app.command("synth")
def synth(
    n: int = typer.Option(12, "-n", help="Number of image/mask pairs."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (ISIC flat layout)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same files."),
    size: str = typer.Option(None, "--size", help="Fixed WIDTHxHEIGHT, e.g. 6000x4000."),
    min_side: int = typer.Option(200, "--min-side", help="Shortest long side when drawn."),
    max_side: int = typer.Option(400, "--max-side", help="Longest long side when drawn."),
) -> None:
    """Write synthetic dermoscopy images with masks: NAME.jpg + NAME_segmentation.png."""
    from dermaseg.data.synth import SynthOptions, synth_dataset

    options = SynthOptions(size=_parse_size(size), min_side=min_side, max_side=max_side)
    written = synth_dataset(n, out, seed=seed, options=options)
    typer.echo(f"wrote {len(written)} pairs to {out}")
