"""Uncertainty of per-image metrics: percentile bootstrap intervals and paired comparisons.

The statistics are over images (the ISIC macro average is a mean over images), so the
interval answers "how much would the mean move on another test set drawn like this one".

* `bootstrap_mean_ci`: the 95 % percentile bootstrap interval of a mean over images. The
  resamples are drawn as index matrices (resamples x images), in chunks that bound memory,
  the same indices for every column: intervals of several metrics come from the same draws.
* `paired_comparison`: two models scored on the same images. The difference B - A per image,
  the paired bootstrap interval of its mean (the same image indices for A and B, i.e. a
  bootstrap of the per-image differences), the Wilcoxon signed-rank p-value, and the counts
  of images where B is better / worse / tied (every dermaseg metric is better when higher).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from dermaseg.errors import DermasegError

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
CHUNK_ELEMENTS = 1 << 22  # values gathered per chunk: 4 Mi float64 = 32 MiB


def bootstrap_mean_ci(values, resamples: int = RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE) -> np.ndarray | None:
    """Percentile bootstrap interval of the mean over the first axis.

    Args:
        values: (n,) or (n, k) per-image values (k metrics: one interval each, all from the
            same resampled image indices).
        resamples: how many resamples of n images (with replacement) to draw.
        seed: seed of numpy's default generator; the same seed gives the same interval.
        confidence: the interval's coverage, e.g. 0.95 for the 2.5 % and 97.5 % quantiles.

    Returns:
        (2,) [low, high] for (n,) input, (2, k) for (n, k); None when n < 2 (one image has no
        spread to resample).

    Raises:
        DermasegError: values not 1-D or 2-D, not finite, resamples < 1 or confidence
            outside (0, 1).
    """
    data = np.asarray(values, dtype=float)
    if data.ndim not in (1, 2):
        raise DermasegError(f"bootstrap: expected (n,) or (n, k) values, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DermasegError("bootstrap: the values must be finite numbers")
    if resamples < 1 or not 0 < confidence < 1:
        raise DermasegError(f"bootstrap: resamples ({resamples}) must be >= 1 and confidence "
                            f"({confidence}) in (0, 1)")
    if len(data) < 2:
        return None
    means = bootstrap_means(data, resamples, seed)
    tail = (1 - confidence) / 2
    return np.quantile(means, [tail, 1 - tail], axis=0)


def bootstrap_means(data: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` resamples of the rows of `data`.

    Args:
        data: (n,) or (n, k) float array, n >= 1.

    Returns:
        (resamples,) or (resamples, k): one mean per resample (and column).

    The index matrix is drawn `rows` resamples at a time (rows depends only on the data's
    shape), so the result depends only on the seed and memory stays near CHUNK_ELEMENTS.
    """
    n = len(data)
    width = data.shape[1] if data.ndim == 2 else 1
    rows = max(1, CHUNK_ELEMENTS // (n * width))
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, rows):
        indices = rng.integers(0, n, size=(min(rows, resamples - start), n))
        chunks.append(data[indices].mean(axis=1))
    return np.concatenate(chunks)


@dataclass
class PairedResult:
    """One metric of a paired comparison of A and B on the same n images."""

    mean_a: float
    mean_b: float
    difference: float  # mean over images of (B - A)
    ci: tuple[float, float] | None  # bootstrap interval of `difference`; None when n < 2
    p_value: float  # Wilcoxon signed-rank, two-sided; 1.0 when identical
    identical: bool  # every per-image difference is exactly 0
    b_better: int
    b_worse: int
    tied: int

    def as_dict(self) -> dict:
        return {"mean_a": self.mean_a, "mean_b": self.mean_b, "difference": self.difference,
                "ci95": None if self.ci is None else list(self.ci), "p_value": self.p_value,
                "identical": self.identical, "b_better": self.b_better,
                "b_worse": self.b_worse, "tied": self.tied}


def wilcoxon_p(differences: np.ndarray) -> tuple[float, bool]:
    """(two-sided p-value of scipy.stats.wilcoxon on the differences, all-zero flag).

    Args:
        differences: (n,) paired differences. All zero: (1.0, True) (scipy has no statistic
            then). scipy's defaults otherwise (zero differences dropped, "wilcox").
    """
    from scipy.stats import wilcoxon

    if not np.any(differences):
        return 1.0, True
    with warnings.catch_warnings():  # e.g. "exact p-value unavailable with ties": scipy falls
        warnings.simplefilter("ignore")  # back to the normal approximation by itself
        result = wilcoxon(differences)  # its result class is made at run time: untyped
        return float(result.pvalue), False  # pyright: ignore[reportAttributeAccessIssue]


def paired_comparison(a, b, resamples: int = RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE) -> list[PairedResult]:
    """Compare B with A on the same images, one result per metric (column).

    Args:
        a: (n, k) per-image values of k metrics of model A ((n,) is taken as one metric).
            Higher is better.
        b: the same for model B, row i of both being the same image.
        resamples: bootstrap resamples (see `bootstrap_mean_ci`); every metric's interval
            uses the same resampled image indices.
        seed: seed of the resampling.
        confidence: of the paired bootstrap interval.

    Returns:
        k PairedResult, in column order.

    Raises:
        DermasegError: shapes differ, fewer than 2 images, or values not finite.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = (x[:, None] if x.ndim == 1 else x for x in (a, b))
    if a.shape != b.shape or a.ndim != 2:
        raise DermasegError(f"paired comparison: shapes {a.shape} and {b.shape} differ")
    if len(a) < 2:
        raise DermasegError(f"paired comparison: needs at least 2 images, got {len(a)}")
    differences = b - a
    intervals = bootstrap_mean_ci(differences, resamples, seed, confidence)
    if intervals is None:  # only below 2 images, refused above
        raise DermasegError("paired comparison: no bootstrap interval for these images")
    results = []
    for column in range(a.shape[1]):
        diff = differences[:, column]
        p_value, identical = wilcoxon_p(diff)
        results.append(PairedResult(
            mean_a=float(np.mean(a[:, column])), mean_b=float(np.mean(b[:, column])),
            difference=float(np.mean(diff)),
            ci=(float(intervals[0, column]), float(intervals[1, column])),
            p_value=p_value, identical=identical, b_better=int(np.sum(diff > 0)),
            b_worse=int(np.sum(diff < 0)), tied=int(np.sum(diff == 0))))
    return results
