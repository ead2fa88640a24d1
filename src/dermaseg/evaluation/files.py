"""An evaluation's files: metrics.csv, metrics.json, jaccard_hist.png, report.md, report.html
and gallery/, written through a hidden folder so that a failure leaves OUT as it was."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from dermaseg.data.discover import display_path
from dermaseg.errors import DermasegError
from dermaseg.evaluation.evaluate import Evaluation
from dermaseg.evaluation.metrics import METRIC_NAMES, pooled_metrics
from dermaseg.evaluation.quality_check import failures, plot_quality, quality_stats
from dermaseg.evaluation.quality_report import failure_section, quality_section
from dermaseg.evaluation.report import plot_jaccard_histogram, save_gallery, write_reports
from dermaseg.evaluation.stats import CONFIDENCE, RESAMPLES, SEED, bootstrap_mean_ci
from dermaseg.fileio import (
    check_output_files,
    staged_outputs,
    write_bytes_atomic,
    write_json_atomic,
)
from dermaseg.quality import FAILURE_JACCARD

OUTPUT_FILES = ("metrics.csv", "metrics.json", "jaccard_hist.png", "report.md", "report.html")
QUALITY_PLOT = "quality.png"  # when a model predicted: estimated against actual Jaccard
GALLERY = "gallery"


def check_output(out: Path) -> None:
    """Raises DermasegError when `out` or one of the outputs in it has the wrong type (a file
    where a folder goes, or the reverse). Creates nothing."""
    check_output_files(out, (*OUTPUT_FILES, QUALITY_PLOT), "evaluation")
    gallery = out / GALLERY
    if (gallery.exists() or gallery.is_symlink()) and not gallery.is_dir():
        raise DermasegError(f"{display_path(gallery)}: not a folder (the evaluation writes "
                            "its gallery there)")


def write_evaluation(result: Evaluation, out: Path, title: str, notes: list[str]) -> dict:
    """metrics.csv, metrics.json, jaccard_hist.png, gallery/*.png, report.md, report.html,
    and quality.png when a model predicted (its quality estimate against the truth).

    Everything is written into a hidden folder in `out` first and moved into place at the end
    (the previous run's gallery thumbnails are replaced; other files stay), so a failure leaves
    `out` as it was.

    Raises:
        DermasegError: `out` or an output in it is in the way, or cannot be written.
    """
    check_output(out)
    files = (*OUTPUT_FILES, QUALITY_PLOT) if result.quality else OUTPUT_FILES
    with staged_outputs(out, files, "evaluation") as stage:
        summary = _write_outputs(result, stage, title, notes)
        (stage / GALLERY).mkdir(exist_ok=True)
        _replace_gallery(stage / GALLERY, out / GALLERY)
    return summary


def _replace_gallery(new: Path, gallery: Path) -> None:
    """Move the new thumbnails into gallery/, removing the previous run's (best_*, worst_*)
    and leaving any other file there alone."""
    if not gallery.exists():
        os.replace(new, gallery)
        return
    for old in [*gallery.glob("best_*.png"), *gallery.glob("worst_*.png")]:
        old.unlink()
    for picture in new.iterdir():
        os.replace(picture, gallery / picture.name)


def _metrics_csv(result: Evaluation) -> bytes:
    """One row per image: the metrics, the confusion counts, and (when a model predicted)
    the estimated Jaccard and review flag."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    estimated = bool(result.quality)
    writer.writerow(["id", *METRIC_NAMES, "tp", "fp", "fn", "tn",
                     *(["estimated_jaccard", "review"] if estimated else [])])
    for image_id, values in result.per_image.items():
        row = [image_id, *(repr(values[n]) for n in METRIC_NAMES), *result.counts[image_id]]
        if estimated:
            quality = result.quality[image_id].to_dict()
            row += ["" if quality["estimated_jaccard"] is None else quality["estimated_jaccard"],
                    int(quality["review"])]
        writer.writerow(row)
    return buffer.getvalue().encode()


def _write_outputs(result: Evaluation, out: Path, title: str, notes: list[str]) -> dict:
    overall = result.overall()
    pooled = pooled_metrics(result.counts.values())
    write_bytes_atomic(out / "metrics.csv", _metrics_csv(result))
    ci95, bootstrap = mean_intervals(result.per_image)
    jaccards = {image_id: values["jaccard"] for image_id, values in result.per_image.items()}
    failed = failures(jaccards)
    summary = {"images": len(result.per_image), "overall": overall, "pooled": pooled,
               "ci95": ci95, "bootstrap": bootstrap, "notes": notes,
               "failures": {"below": FAILURE_JACCARD, "count": len(failed),
                            "ids": [image_id for image_id, _ in failed]},
               "quality": quality_stats(jaccards, result.quality) if result.quality else None,
               "per_image": result.per_image}
    if result.quality:
        summary["per_image_quality"] = {i: q.to_dict() for i, q in result.quality.items()}
        plot_quality(jaccards, result.quality, out / QUALITY_PLOT)
    write_json_atomic(out / "metrics.json", summary)
    plot_jaccard_histogram(list(jaccards.values()), out / "jaccard_hist.png")
    gallery = save_gallery(result.gallery, out / GALLERY)
    sections = [failure_section(failed, len(jaccards), result.quality)]
    if result.quality:
        sections.append(quality_section(summary["quality"], QUALITY_PLOT))
    write_reports(out, title, result.per_image, overall, "jaccard_hist.png", gallery, notes,
                  ci95, sections)
    return summary


def mean_intervals(per_image: dict[str, dict[str, float]]) -> tuple[dict | None, dict]:
    """({metric: [low, high]} 95 % percentile bootstrap intervals of the means over images,
    or None for a single image; how they were drawn, for metrics.json's "bootstrap").

    Every metric's interval comes from the same resampled image indices.
    """
    values = [[row[name] for name in METRIC_NAMES] for row in per_image.values()]
    bounds = bootstrap_mean_ci(values, RESAMPLES, SEED, CONFIDENCE)
    how = {"method": "percentile bootstrap over images", "confidence": CONFIDENCE,
           "resamples": RESAMPLES, "seed": SEED}
    if bounds is None:
        how["note"] = f"{len(values)} image: no interval (it needs at least 2 images)"
        return None, how
    return {name: [float(bounds[0, k]), float(bounds[1, k])]
            for k, name in enumerate(METRIC_NAMES)}, how
