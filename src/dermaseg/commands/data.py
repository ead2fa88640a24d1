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
    refuse_prepared(folder, "check")
    report = check_dataset(folder, workers=workers or None, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.format_table())
    if not report.ok:
        raise typer.Exit(1)


def refuse_prepared(folder: Path, command: str) -> None:
    """A `data prepare` output (manifest.json + images/) passed where raw pairs are expected."""
    from dermaseg.data.prepare import is_prepared_folder

    if is_prepared_folder(folder):
        raise UsageError(
            f"{folder}: a prepared dataset (manifest.json, .npy arrays written by `dermaseg data "
            f"prepare`), not raw image/mask pairs; `data {command}` reads the original folder "
            f"(NAME.jpg + NAME_segmentation.png). Pass this one as --data to train/evaluate.")


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
    typer.echo(f"wrote {len(written)} pair{'' if len(written) == 1 else 's'} to {out}")


@app.command("prepare")
def prepare(
    folder: Path = typer.Argument(..., help="Dataset folder (ISIC, PH2 or flat layout)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for arrays + manifest."),
    size: int = typer.Option(512, "--size", help="Side of the square arrays, pixels."),
    val: float = typer.Option(0.15, "--val", help="Validation fraction (random split)."),
    test: float = typer.Option(0.15, "--test", help="Test fraction (random split)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the random split."),
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel processes (0: all cores)."),
    official: bool = typer.Option(
        True, "--official-split/--random-split",
        help="Keep an official split given by folder names (ISIC *Training*/*Test*).",
    ),
    folds: int | None = typer.Option(
        None, "--folds", help="Also share train + val into K cross-validation folds "
        "(seeded by --seed; train one with `dermaseg train --fold F`)."),
    split_from: Path | None = typer.Option(
        None, "--split-from", help="Keep the split (and folds) of another prepared folder or "
        "its manifest.json, e.g. the same data at another --size; new items are drawn."),
    redraw_split: bool = typer.Option(
        False, "--redraw-split", help="Draw the split anew instead of keeping the one of the "
        "manifest already in the output folder."),
) -> None:
    """Decode every pair once, letterbox to --size, split train/val/test, write a manifest.

    Bad pairs are skipped and listed; a re-run only prepares what changed. Exit code 1 (and
    nothing written) when no pair is usable.

    --folds 5 gives every non-test item a fold 0..4 (balanced sizes, same seed: same folds).

    Re-run into a prepared folder, items keep their split when --val, --test and --seed are
    the same, and their fold when --folds is too; only new items are drawn.
    """
    from dermaseg.data.prepare import prepare_dataset, summary_lines

    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    refuse_prepared(folder, "prepare")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: a file, not a folder for the prepared data")
    manifest = prepare_dataset(folder, out, size=size, val=val, test=test, seed=seed,
                               workers=workers or None, keep_official_split=official,
                               folds=folds, split_from=split_from, redraw_split=redraw_split)
    typer.echo("\n".join(summary_lines(manifest, out)))


@app.command("download")
def download(
    dataset: str = typer.Argument(..., help="isic2016, isic2017 or isic2018 (Task 1)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the archives and images."),
    url_base: str = typer.Option(None, "--url-base", help="Server to fetch from (a mirror)."),
    split: list[str] = typer.Option(
        None, "--split", help="training, validation or test; repeat for several (default all)."
    ),
    timeout: float = typer.Option(10.0, "--timeout", help="Network timeout in seconds."),
    no_checksum: bool = typer.Option(False, "--no-checksum", help="Skip SHA-256 checks."),
) -> None:
    """Fetch the official ISIC Task 1 archives (resumable), unpack them, then check them."""
    from dermaseg.data.download import URL_BASE, download_dataset

    report = download_dataset(
        dataset,
        out,
        url_base=URL_BASE if url_base is None else url_base,
        splits=tuple(split) if split else None,
        timeout=timeout,
        verify_checksum=not no_checksum,
    )
    typer.echo(report.format_table())
    if not report.ok:
        raise typer.Exit(1)
