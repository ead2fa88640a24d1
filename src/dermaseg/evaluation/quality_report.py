"""The report's sections on failures and on the quality estimate (dermaseg.quality), shown
first in report.md and report.html: the images a user must look at before the averages."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

from dermaseg.evaluation.quality_check import WORST_SHARE
from dermaseg.quality import FAILURE_JACCARD, Quality

SHOWN_FAILURES = 50  # listed by name; the rest are counted


@dataclass(frozen=True)
class ReportSection:
    """A titled section: Markdown lines and HTML, and an optional picture beside the report."""

    title: str
    markdown: list[str]
    html: str
    picture: str | None = None


def _estimate_words(quality: Quality | None) -> str:
    if quality is None or quality.estimated_jaccard is None:
        return "" if quality is None else (" (review flagged)" if quality.review else "")
    flag = "review flagged" if quality.review else "not flagged"
    return f" (estimated {quality.estimated_jaccard:.3f}, {flag})"


def failure_section(failed: list[tuple[str, float]], images: int,
                    qualities: Mapping[str, Quality] | None = None) -> ReportSection:
    """The images under the threshold-Jaccard cut, worst first, with their quality estimate
    when a model predicted."""
    qualities = qualities or {}
    title = f"Failures: {len(failed)} of {images} images with Jaccard < {FAILURE_JACCARD}"
    if not failed:
        return ReportSection(title, ["None."], "<p>None.</p>")
    shown = failed[:SHOWN_FAILURES]
    more = len(failed) - len(shown)
    tail = [f"... and {more} more (metrics.json lists them all)"] if more else []
    lines = [f"{name}: Jaccard {value:.3f}{_estimate_words(qualities.get(name))}"
             for name, value in shown]
    markdown = [f"- {line}" for line in lines] + tail
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    more_html = f"<p>{html.escape(tail[0])}</p>" if tail else ""
    return ReportSection(title, markdown, f"<ol>{items}</ol>{more_html}")


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


ROWS = (("auroc", "AUROC for a failure"),
        ("spearman", "Spearman correlation with the actual Jaccard"),
        ("worst_10pct_capture", f"share of the failures among the {WORST_SHARE:.0%} ranked worst"),
        ("mean_absolute_error", "mean absolute error of the estimated Jaccard"))


def quality_section(stats: dict, picture: str) -> ReportSection:
    """The estimate against the baseline, with the scatter of estimated against actual."""
    estimate = stats["estimate"] or {}
    baseline = stats["baseline"]
    kind = estimate.get("kind", "uncalibrated: the model has no fitted estimator")
    intro = (f"Every mask comes with an estimated Jaccard ({kind}); review is recommended for "
             f"{stats['flagged']} images, {stats['failures_flagged']} of the "
             f"{stats['failures']} failures among them. Baseline: one pass's uncertain pixels "
             "(probability 0.2-0.8) relative to the mask's area.")
    rows = [(label, _number(estimate.get(key)), _number(baseline.get(key)))
            for key, label in ROWS]
    markdown = [intro, "", "| measure | estimate | baseline |", "|---|---:|---:|",
                *[f"| {label} | {ours} | {base} |" for label, ours, base in rows]]
    table = "".join(f"<tr><td>{html.escape(label)}</td><td>{ours}</td><td>{base}</td></tr>"
                    for label, ours, base in rows)
    page = (f"<p>{html.escape(intro)}</p><table><tr><th>measure</th><th>estimate</th>"
            f"<th>baseline</th></tr>{table}</table>")
    return ReportSection("Quality estimate", markdown, page, picture)
