"""Judging the quality estimate: AUROC, Spearman, the worst-10 % capture and the failures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from dermaseg.evaluation.quality_check import (
    auroc,
    failures,
    quality_stats,
    spearman,
    worst_capture,
)
from dermaseg.quality import Quality


def pairwise_auroc(scores, labels) -> float:
    """The definition: P(score of a positive > score of a negative), ties half."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0
               for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_auroc_is_the_pairwise_probability_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.3
    assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))
    assert auroc(scores, np.zeros(40, bool)) is None


def test_spearman_equals_scipys_and_refuses_a_constant():
    rng = np.random.default_rng(2)
    a, b = rng.random(30), rng.random(30)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert spearman(a, np.ones(30)) is None


def test_worst_capture_counts_the_failures_in_the_top_tenth():
    risk = np.arange(20, dtype=float)  # images 18 and 19 are the 10 % riskiest
    failed = np.zeros(20, bool)
    failed[[19, 3]] = True
    assert worst_capture(risk, failed) == 0.5
    assert worst_capture(risk, np.zeros(20, bool)) is None


def quality(estimated: float | None, ratio: float, review: bool) -> Quality:
    return Quality(estimated, review, ("why",) if review else (),
                   {"uncertain_ratio": ratio}, "one pass" if estimated is not None else "x")


def test_quality_stats_judge_the_estimate_and_the_baseline():
    jaccards = {"a": 0.9, "b": 0.3, "c": 0.85, "d": 0.6, "e": 0.95}
    qualities = {"a": quality(0.88, 0.1, False), "b": quality(0.4, 0.05, True),
                 "c": quality(0.8, 0.2, False), "d": quality(0.7, 0.9, True),
                 "e": quality(0.9, 0.3, False)}
    result = quality_stats(jaccards, qualities)
    assert result["failures"] == 2 and result["flagged"] == 2 and result["failures_flagged"] == 2
    assert result["estimate"]["auroc"] == 1.0
    assert result["estimate"]["mean_absolute_error"] == pytest.approx(
        np.mean([0.02, 0.1, 0.05, 0.1, 0.05]))
    assert result["baseline"]["auroc"] == pytest.approx(pairwise_auroc(
        [0.1, 0.05, 0.2, 0.9, 0.3], [False, True, False, True, False]))
    assert failures(jaccards) == [("b", 0.3), ("d", 0.6)]
