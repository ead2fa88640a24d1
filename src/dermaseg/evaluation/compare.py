"""Compare two evaluations (`dermaseg evaluate` folders) image by image: is B better than A?

Reads each folder's metrics.csv (one row per image), pairs the images by id and, for every
metric, computes the paired statistics of `dermaseg.evaluation.stats.paired_comparison`. Writes
compare.json, compare.md and compare.png (scatter of one metric, A vs B, and the histogram of
the paired differences with the interval) through a hidden folder in OUT, so a failure leaves
OUT as it was.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermaseg.data.discover import display_path
from dermaseg.errors import DermasegError, UsageError
from dermaseg.evaluation.metrics import METRIC_NAMES
from dermaseg.evaluation.report import LABELS, md_text
from dermaseg.evaluation.stats import CONFIDENCE, PairedResult, paired_comparison
from dermaseg.fileio import staged_outputs, write_bytes_atomic, write_json_atomic

OUTPUT_FILES = ("compare.json", "compare.md", "compare.png")
COUNTS = ("tp", "fp", "fn", "tn")  # the confusion counts metrics.csv also holds
SHOWN_IDS = 5


@dataclass
class Scores:
    """The per-image metrics of one evaluation folder."""

    folder: Path
    ids: list[str]  # in the file's order
    values: np.ndarray  # (len(ids), len(METRIC_NAMES)) float, columns in METRIC_NAMES order
    # id -> (ground-truth lesion pixels, image pixels), from tp/fp/fn/tn; None without them
    truth: dict[str, tuple[int, int]] | None = None

    def rows(self, ids: list[str]) -> np.ndarray:
        """(len(ids), len(METRIC_NAMES)): the rows of these ids, in the order given."""
        where = {image_id: row for row, image_id in enumerate(self.ids)}
        return self.values[[where[i] for i in ids]]


def read_scores(folder: Path) -> Scores:
    """The metrics.csv of an evaluation folder (written by `dermaseg evaluate`).

    Raises:
        UsageError: `folder` is not a folder, has no metrics.csv, or is a training run.
        DermasegError: metrics.csv unreadable, empty, missing an id or metric column, with a
            value that is not a finite number, or an id twice (the file and line are named).
    """
    path = folder / "metrics.csv"
    if not folder.is_dir():
        raise UsageError(f"{display_path(folder)}: not a folder (give an evaluation folder "
                         "written by `dermaseg evaluate`)")
    if not path.is_file():
        raise UsageError(f"{display_path(folder)}: not an evaluation folder (no metrics.csv; "
                         "make one with `dermaseg evaluate ... -o FOLDER`)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a BOM: saved by Excel
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DermasegError(f"{display_path(path)}: not a readable CSV file ({exc})") from exc
    if not rows:
        raise DermasegError(f"{display_path(path)}: empty file (expected a header row "
                            f"id,{','.join(METRIC_NAMES)},...)")
    header = rows[0]
    missing = [name for name in ("id", *METRIC_NAMES) if name not in header]
    if missing and "epoch" in header:
        raise UsageError(_training_run_message(folder))
    if missing:
        raise DermasegError(f"{display_path(path)}: no column {', '.join(missing)} in the "
                            f"header (found: {', '.join(header) or 'nothing'})")
    ids, values = _parse_rows(path, header, rows[1:])
    return Scores(folder, ids, np.asarray(values, dtype=float).reshape(len(ids), -1),
                  _truth_sizes(header, rows[1:]))


def _truth_sizes(header: list[str], rows: list[list[str]]) -> dict[str, tuple[int, int]] | None:
    """id -> (tp + fn, tp + fp + fn + tn): what identifies the scored image beside its id."""
    if not all(name in header for name in COUNTS):
        return None
    columns, id_column = [header.index(name) for name in COUNTS], header.index("id")
    sizes = {}
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        try:
            tp, fp, fn, tn = (int(float(row[column])) for column in columns)
        except ValueError:
            return None
        sizes[row[id_column]] = (tp + fn, tp + fp + fn + tn)
    return sizes


def _training_run_message(folder: Path) -> str:
    """What to give instead of a training run's folder (its metrics.csv is per epoch)."""
    evaluations = sorted(path.parent.name for path in folder.glob("eval-*/metrics.csv"))
    if evaluations:
        listed = ", ".join(display_path(folder / name) for name in evaluations)
        return (f"{display_path(folder)}: a training run, not an evaluation (its metrics.csv "
                f"is per epoch); its evaluations: {listed}")
    return (f"{display_path(folder)}: a training run, not an evaluation (its metrics.csv is "
            f"per epoch); evaluate it first: `dermaseg evaluate "
            f"{display_path(folder / 'best.ckpt')} --data PREPARED` writes "
            f"{display_path(folder / 'eval-test')}")


def _parse_rows(path: Path, header: list[str], rows: list[list[str]]):
    """(ids, per-image values in METRIC_NAMES order) of metrics.csv's data rows.

    Raises:
        DermasegError: a short row, a value that is not a finite number, a repeated id, or no
            rows at all, naming the file, its line and the column.
    """
    columns = [header.index(name) for name in METRIC_NAMES]
    id_column = header.index("id")
    ids, values, seen = [], [], {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) < len(header):
            raise DermasegError(f"{display_path(path)} line {line}: {len(row)} values, the "
                                f"header has {len(header)}")
        image_id = row[id_column]
        if image_id in seen:
            raise DermasegError(f"{display_path(path)} line {line}: id {image_id!r} again "
                                f"(first on line {seen[image_id]})")
        seen[image_id] = line
        numbers = []
        for name, column in zip(METRIC_NAMES, columns, strict=True):
            try:
                number = float(row[column])
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise DermasegError(f"{display_path(path)} line {line}: {name} is "
                                    f"{row[column]!r}, not a number")
            numbers.append(number)
        ids.append(image_id)
        values.append(numbers)
    if not ids:
        raise DermasegError(f"{display_path(path)}: no image rows (only the header)")
    return ids, values


def _shown(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")


def common_ids(a: Scores, b: Scores, common: bool) -> tuple[list[str], list[str], list[str]]:
    """(ids in both, in A's order; ids only in A; ids only in B).

    Raises:
        UsageError: the id sets differ and `common` is False (how many and a few of each are
            named), an id names images of other sizes or ground truths in A and B (by their
            tp/fp/fn/tn), or fewer than 2 images are in both.
    """
    in_a, in_b = set(a.ids), set(b.ids)
    shared = [i for i in a.ids if i in in_b]
    only_a = [i for i in a.ids if i not in in_b]
    only_b = [i for i in b.ids if i not in in_a]
    if (only_a or only_b) and not common:
        raise UsageError(
            f"the evaluations scored different images: {len(only_a)} only in "
            f"{display_path(a.folder)}" + (f" ({_shown(only_a)})" if only_a else "")
            + f", {len(only_b)} only in {display_path(b.folder)}"
            + (f" ({_shown(only_b)})" if only_b else "") + f"; {len(shared)} in both. "
            "Comparing means over different images is invalid; --common compares the images "
            "in both")
    if a.truth is not None and b.truth is not None:
        other = [i for i in shared if a.truth.get(i) != b.truth.get(i)]
        if other:
            (lesion_a, size_a), (lesion_b, size_b) = a.truth[other[0]], b.truth[other[0]]
            raise UsageError(
                f"{display_path(a.folder)} and {display_path(b.folder)}: the same ids name "
                f"different images for {len(other)} of {len(shared)} ({_shown(other)}): "
                f"{other[0]} has a {lesion_a}-pixel lesion in {size_a} pixels in A, "
                f"{lesion_b} in {size_b} in B. Compare evaluations of the same ground truth")
    if len(shared) < 2:
        raise UsageError(f"{display_path(a.folder)} and {display_path(b.folder)}: "
                         f"{len(shared)} image(s) in both; a comparison needs at least 2")
    return shared, only_a, only_b


def compare_scores(a: Scores, b: Scores, shared: list[str], resamples: int,
                   seed: int) -> dict[str, PairedResult]:
    """metric name -> PairedResult of B against A on the `shared` ids.

    Each mean is taken in its own file's order, so with no image dropped it equals that
    evaluation's metrics.json "overall" value exactly (a float sum depends on its order).

    Raises:
        DermasegError: fewer than 2 shared images.
    """
    results = paired_comparison(a.rows(shared), b.rows(shared), resamples, seed)
    keep = set(shared)
    rows_a = np.array([i in keep for i in a.ids])
    rows_b = np.array([i in keep for i in b.ids])
    return {name: dataclasses.replace(  # 1-D means: the summation order of `summarize`
                result, mean_a=float(np.mean(a.values[rows_a, k])),
                mean_b=float(np.mean(b.values[rows_b, k])))
            for k, (name, result) in enumerate(zip(METRIC_NAMES, results, strict=True))}


def default_out(a: Path, b: Path) -> Path:
    """compare-<A>-vs-<B> in the folder that holds both A and B (their nearest common parent).

    <A> and <B> are the paths below that folder, '/' written '-' (runs/r50/eval-test and
    runs/r101/eval-test: runs/compare-r50-eval-test-vs-r101-eval-test); at most 100
    characters each. When they share no folder but the filesystem root: the current folder.
    """
    first, second = os.path.abspath(a), os.path.abspath(b)
    parent = os.path.commonpath([os.path.dirname(first), os.path.dirname(second)])
    if os.path.dirname(parent) == parent:  # "/": not a place to write
        parent = os.getcwd()

    def label(path: str) -> str:
        relative = os.path.relpath(path, parent)
        if relative == "." or relative.startswith(".."):  # the same folder; beside the root
            return Path(path).name[:100]
        return relative.replace(os.sep, "-")[:100]

    return Path(parent) / f"compare-{label(first)}-vs-{label(second)}"


def summary_dict(a: Scores, b: Scores, shared: list[str], dropped: tuple[list, list],
                 results: dict[str, PairedResult], resamples: int, seed: int,
                 metric: str) -> dict:
    """The content of compare.json."""
    return {
        "a": {"folder": display_path(a.folder), "images": len(a.ids)},
        "b": {"folder": display_path(b.folder), "images": len(b.ids)},
        "images": len(shared),
        "dropped": {"only_a": dropped[0], "only_b": dropped[1]},
        "difference": "B - A (mean over images of the per-image difference)",
        "ci": f"{round(CONFIDENCE * 100)}% paired percentile bootstrap over images",
        "resamples": resamples, "seed": seed,
        "test": "Wilcoxon signed-rank, two-sided (scipy.stats.wilcoxon); p = 1 when identical",
        "metric": metric,
        "verdict": verdict(results[metric], metric),
        "metrics": {name: result.as_dict() for name, result in results.items()},
    }


SIGNIFICANCE = 0.05  # a Wilcoxon p below this, with a CI that excludes 0: B and A differ


def format_p(result: PairedResult) -> str:
    """The p-value in one format: three decimals, "<0.001" below that."""
    if result.identical:
        return "1 (identical)"
    return "<0.001" if result.p_value < 0.001 else f"{result.p_value:.3f}"


def p_text(result: PairedResult) -> str:
    """"p = 0.004", "p < 0.001", "p = 1 (identical)": the p-value in a sentence."""
    text = format_p(result)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def _difference(value: float) -> str:
    return f"{value:.3f}" if abs(value) >= 0.0005 or value == 0 else "less than 0.001"


def verdict(result: PairedResult, metric: str) -> str:
    """One sentence in plain words: which of A and B is better on `metric` and by how much,
    with the 95 % CI, the Wilcoxon p and how many images the better one wins; or that these
    images do not tell them apart. "Better" needs both a CI that excludes 0 and p < 0.05."""
    label = LABELS[metric]
    images = result.b_better + result.b_worse + result.tied
    if result.identical:
        return f"A and B give the same {label} on each of the {images} images."
    leader = "B" if result.difference > 0 else "A"
    sign = 1.0 if leader == "B" else -1.0
    wins = result.b_better if leader == "B" else result.b_worse
    p = p_text(result)
    ci = ("no CI" if result.ci is None else
          "95 % CI {:.3f} to {:.3f}".format(*sorted(sign * bound for bound in result.ci)))
    numbers = f"({ci}, {p}, {wins} of {images} images better with {leader})"
    by = _difference(abs(result.difference))
    clear = result.ci is not None and (result.ci[0] > 0 or result.ci[1] < 0)
    if clear and result.p_value < SIGNIFICANCE:
        return f"{leader} is better on {label} by {by} {numbers}."
    if clear or result.p_value < SIGNIFICANCE:
        return (f"{leader} is probably better on {label}, by {by} {numbers}; the interval and "
                "the test disagree: compare on more images.")
    return (f"No clear difference on {label}: {leader} is ahead by {by} {numbers}, within "
            "what chance gives on these images.")


def format_ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def table_rows(results: dict[str, PairedResult]) -> list[tuple[str, ...]]:
    """(metric, mean A, mean B, B - A, CI, p, better/worse/tied) as text, one per metric."""
    return [(name, f"{r.mean_a:.4f}", f"{r.mean_b:.4f}", f"{r.difference:+.4f}",
             format_ci(r.ci), format_p(r), f"{r.b_better}/{r.b_worse}/{r.tied}")
            for name, r in ((n, results[n]) for n in LABELS)]


TABLE_HEADER = ("metric", "mean A", "mean B", "B - A", "95% CI of B - A", "p (Wilcoxon)",
                "B better/worse/tied")


def markdown(summary: dict, results: dict[str, PairedResult]) -> str:
    """compare.md: what was compared, the table, the picture."""
    lines = ["# dermaseg comparison", "", f"**{md_text(summary['verdict'])}**", "",
             f"- A: {md_text(summary['a']['folder'])} ({summary['a']['images']} images)",
             f"- B: {md_text(summary['b']['folder'])} ({summary['b']['images']} images)",
             f"- {summary['images']} images in both; difference = B - A per image, then the "
             "mean over images.",
             f"- CI: {summary['ci']} ({summary['resamples']} resamples, seed {summary['seed']})"
             f"; p: {summary['test']}."]
    dropped = summary["dropped"]
    if dropped["only_a"] or dropped["only_b"]:
        lines.append(f"- --common: dropped {len(dropped['only_a'])} image(s) only in A and "
                     f"{len(dropped['only_b'])} only in B.")
    lines += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|---" + "|---:" * 6 + "|"]
    lines += ["| " + " | ".join((LABELS[row[0]], *row[1:])) + " |"
              for row in table_rows(results)]
    lines += ["", f"![{LABELS[summary['metric']]}: A vs B per image](compare.png)", ""]
    return "\n".join(lines)


def plot_comparison(a: np.ndarray, b: np.ndarray, result: PairedResult, metric: str,
                    path: Path, names: tuple[str, str] = ("A", "B")):
    """compare.png: per-image B against A (the diagonal: no change) and the histogram of the
    differences B - A with their mean and its interval.

    Args:
        a, b: (n,) values of `metric` for the same n images.
        names: what A and B are (their folders), named in the legend.

    Returns:
        The matplotlib Figure drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    label = LABELS[metric]
    figure = Figure(figsize=(11, 4.5))
    scatter, histogram = figure.subplots(1, 2)
    low = max(0.0, min(a.min(), b.min()) - 0.05)
    high = max(low + 0.1, min(1.02, max(a.max(), b.max()) + 0.05))
    scatter.plot([low, high], [low, high], color="#888888", linewidth=1, label="B = A")
    scatter.scatter(a, b, s=12, alpha=0.6, color="#4c72b0", label="an image")
    for letter, name in zip("AB", names, strict=True):
        scatter.plot([], [], " ", label=f"{letter}: {name}")  # a legend line, no mark
    scatter.set(xlim=(low, high), ylim=(low, high), xlabel=f"{label}, A",
                ylabel=f"{label}, B", title=f"{len(a)} images: B better {result.b_better}, "
                f"worse {result.b_worse}, tied {result.tied}")
    scatter.set_aspect("equal")
    scatter.legend(loc="lower right")
    differences = b - a
    histogram.hist(differences, bins=30, color="#4c72b0", edgecolor="white")
    histogram.axvline(0, color="#888888", linewidth=1)
    histogram.axvline(result.difference, color="#c44e52",
                      label=f"mean {result.difference:+.4f}")
    if result.ci is not None:
        histogram.axvspan(*result.ci, color="#c44e52", alpha=0.2, zorder=0,
                          label=f"95% CI {format_ci(result.ci)}")
    histogram.set(xlabel=f"{label}, B - A per image", ylabel="images",
                  title=f"paired differences, {p_text(result)}")
    histogram.legend(loc="upper left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())
    return figure


def write_comparison(out: Path, summary: dict, results: dict[str, PairedResult],
                     picture: tuple[np.ndarray, np.ndarray]) -> None:
    """compare.json, compare.md, compare.png in `out`, written in a hidden folder there and
    moved into place at the end; `out` is removed again if it was made here and that fails.

    Args:
        picture: (n,) A and (n,) B values of summary["metric"], the same images in order.

    Raises:
        DermasegError: `out` or an output in it is in the way, or cannot be written.
    """
    with staged_outputs(out, OUTPUT_FILES, "comparison") as stage:
        write_json_atomic(stage / "compare.json", summary)
        write_bytes_atomic(stage / "compare.md", markdown(summary, results).encode())
        metric = summary["metric"]
        plot_comparison(*picture, results[metric], metric, stage / "compare.png",
                        (summary["a"]["folder"], summary["b"]["folder"]))
