"""How well the quality estimate tells the failures, on images whose truth is known.

    stats = quality_stats(jaccards, qualities)   # per-image actual Jaccard, dermaseg.quality
    stats["estimate"]["auroc"], stats["baseline"]["auroc"]

A failure is an image with Jaccard < 0.65 (threshold-Jaccard scores it 0). The estimate is
judged by: the AUROC of a low estimated Jaccard for a failure, the Spearman correlation and
mean absolute error between estimated and actual Jaccard, and how many of the failures are
among the 10 % of images it ranks worst. The baseline, judged the same way, is one pass's
share of uncertain pixels (probability 0.2..0.8) relative to the mask's area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from dermaseg.fileio import write_bytes_atomic
from dermaseg.quality import FAILURE_JACCARD, Quality

WORST_SHARE = 0.10  # "the 10 % of images flagged most uncertain"


def failures(jaccards: Mapping[str, float], below: float = FAILURE_JACCARD
             ) -> list[tuple[str, float]]:
    """(id, Jaccard) of every image under `below`, worst first."""
    return sorted(((i, j) for i, j in jaccards.items() if j < below), key=lambda item: item[1])


def auroc(scores: ArrayLike, positives: ArrayLike) -> float | None:
    """Probability that a positive scores above a negative (ties count half); None without
    both classes."""
    labels = np.asarray(positives, bool)
    count, negatives = int(labels.sum()), int((~labels).sum())
    if count == 0 or negatives == 0:
        return None
    ranks = scipy_stats.rankdata(np.asarray(scores, float))
    return float((ranks[labels].sum() - count * (count + 1) / 2) / (count * negatives))


def spearman(a: ArrayLike, b: ArrayLike) -> float | None:
    """Spearman's rank correlation (Pearson's of the ranks, ties averaged); None when either
    side is constant or shorter than 3."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ranks_a, ranks_b = scipy_stats.rankdata(a), scipy_stats.rankdata(b)
    value = float(np.corrcoef(ranks_a, ranks_b)[0, 1])
    return value if math.isfinite(value) else None


def worst_capture(risk: ArrayLike, positives: ArrayLike,
                  share: float = WORST_SHARE) -> float | None:
    """Share of the failures among the `share` of images with the highest risk."""
    labels = np.asarray(positives, bool)
    if not labels.any():
        return None
    count = max(1, math.ceil(share * len(labels)))
    worst = np.argsort(-np.asarray(risk, float), kind="stable")[:count]
    return float(labels[worst].sum() / labels.sum())


def _judge(risk: np.ndarray, actual: np.ndarray, failed: np.ndarray) -> dict[str, Any]:
    return {"auroc": auroc(risk, failed), "spearman": spearman(-risk, actual),
            "worst_10pct_capture": worst_capture(risk, failed)}


def quality_stats(jaccards: Mapping[str, float], qualities: Mapping[str, Quality]) -> dict:
    """The estimate and the baseline judged on the images that have both (see the module)."""
    ids = [i for i in jaccards if i in qualities]
    actual = np.array([jaccards[i] for i in ids], float)
    failed = actual < FAILURE_JACCARD
    ratio = np.array([qualities[i].signals["uncertain_ratio"] for i in ids], float)
    flagged = np.array([qualities[i].review for i in ids], bool)
    result: dict = {
        "images": len(ids), "failures": int(failed.sum()), "failure_below": FAILURE_JACCARD,
        "flagged": int(flagged.sum()), "failures_flagged": int((flagged & failed).sum()),
        "baseline": _judge(ratio, actual, failed), "estimate": None,
    }
    estimated = [qualities[i].estimated_jaccard for i in ids]
    if ids and all(value is not None for value in estimated):
        values = np.array(estimated, float)
        judged = _judge(-values, actual, failed)
        judged["mean_absolute_error"] = float(np.abs(values - actual).mean())
        judged["kind"] = qualities[ids[0]].estimate
        result["estimate"] = judged
    return result


def plot_quality(jaccards: Mapping[str, float], qualities: Mapping[str, Quality],
                 path: Path) -> None:
    """Scatter of estimated (or, uncalibrated, the baseline's) against actual Jaccard, the
    flagged images in orange; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from dermaseg.evaluation.report import png_bytes

    ids = [i for i in jaccards if i in qualities]
    actual = [jaccards[i] for i in ids]
    calibrated = all(qualities[i].estimated_jaccard is not None for i in ids)
    shown = [float(qualities[i].estimated_jaccard or 0.0) if calibrated
             else qualities[i].signals["uncertain_ratio"] for i in ids]
    flagged = [qualities[i].review for i in ids]
    figure = Figure(figsize=(5, 4.5))
    axes = figure.subplots()
    colours = ["#E69F00" if flag else "#0072B2" for flag in flagged]  # Okabe-Ito
    axes.scatter(actual, shown, c=colours, s=14)
    axes.axvline(FAILURE_JACCARD, color="#999999", linestyle="--", linewidth=1)
    if calibrated:
        axes.plot([0, 1], [0, 1], color="#999999", linewidth=1)
        axes.set_ylim(0, 1)
    axes.set_xlim(0, 1)
    axes.set_xlabel("actual Jaccard")
    axes.set_ylabel("estimated Jaccard" if calibrated
                    else "log(1 + uncertain pixels / mask pixels)")
    axes.set_title(f"Quality estimate, {len(ids)} images (orange: review recommended)")
    write_bytes_atomic(path, png_bytes(figure))
