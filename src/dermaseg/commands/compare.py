"""`dermaseg compare`: two evaluations of the same images, with paired statistics."""

from __future__ import annotations

from pathlib import Path

import typer

from dermaseg.errors import UsageError
from dermaseg.evaluation.metrics import METRIC_NAMES
from dermaseg.evaluation.stats import RESAMPLES, SEED


def _print_table(summary: dict, results: dict, out: Path) -> None:
    from dermaseg.evaluation.compare import TABLE_HEADER, table_rows

    typer.echo(f"A: {summary['a']['folder']} ({summary['a']['images']} images)")
    typer.echo(f"B: {summary['b']['folder']} ({summary['b']['images']} images)")
    typer.echo(f"{summary['images']} images in both; B - A per image, mean over images; "
               f"95% paired bootstrap CI ({summary['resamples']} resamples, seed "
               f"{summary['seed']}); p: Wilcoxon signed-rank")
    rows = [TABLE_HEADER, *table_rows(results)]
    widths = [max(len(row[k]) for row in rows) for k in range(len(TABLE_HEADER))]
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True))]
        typer.echo("  " + "  ".join(cells))
    typer.echo(f"written: {out / 'compare.md'}, compare.json, compare.png")
    typer.echo(summary["verdict"])


def compare(
    eval_a: Path = typer.Argument(..., metavar="EVAL_A",
                                  help="Evaluation folder of model A (`dermaseg evaluate`)."),
    eval_b: Path = typer.Argument(..., metavar="EVAL_B",
                                  help="Evaluation folder of model B, on the same images."),
    out: Path = typer.Option(None, "-o", "--out", help="Output folder (default: "
                             "compare-<A>-vs-<B> in the folder holding both)."),
    metric: str = typer.Option("dice", "--metric", help="Metric of the picture: "
                               + ", ".join(METRIC_NAMES) + "."),
    common: bool = typer.Option(False, "--common", help="Compare on the images both scored "
                                "(else different image sets are an error)."),
    resamples: int = typer.Option(RESAMPLES, "--resamples", min=100,
                                  help="Bootstrap resamples."),
    seed: int = typer.Option(SEED, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Is B better than A? Paired statistics over the images both evaluations scored.

    Reads EVAL_A/metrics.csv and EVAL_B/metrics.csv and pairs images by id. For every metric:
    mean A, mean B, the mean per-image difference B - A with its 95% paired bootstrap CI,
    the Wilcoxon signed-rank p-value and how many images B does better / worse / the same.
    Writes compare.json, compare.md and compare.png (METRIC of B against A per image, and the
    histogram of the differences) to OUT.
    """
    from dermaseg.evaluation.compare import (
        common_ids,
        compare_scores,
        default_out,
        read_scores,
        summary_dict,
        write_comparison,
    )

    if metric not in METRIC_NAMES:
        raise UsageError(f"--metric {metric}: not a metric; one of {', '.join(METRIC_NAMES)}")
    a, b = read_scores(eval_a), read_scores(eval_b)
    shared, only_a, only_b = common_ids(a, b, common)
    if only_a or only_b:
        typer.echo(f"note: --common: dropped {len(only_a)} image(s) only in A and "
                   f"{len(only_b)} only in B; comparing the {len(shared)} in both", err=True)
    if eval_a.resolve() == eval_b.resolve():
        typer.echo("note: A and B are the same folder: every difference is 0", err=True)
    out = out or default_out(eval_a, eval_b)
    results = compare_scores(a, b, shared, resamples, seed)
    summary = summary_dict(a, b, shared, (only_a, only_b), results, resamples, seed, metric)
    column = METRIC_NAMES.index(metric)
    write_comparison(out, summary, results,
                     (a.rows(shared)[:, column], b.rows(shared)[:, column]))
    _print_table(summary, results, out)
