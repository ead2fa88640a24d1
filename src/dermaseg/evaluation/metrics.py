"""Segmentation metrics with the conventions of the official ISIC scorer.

Two implementations of the same definitions:

* numpy, for evaluation of mask files (`confusion`, `image_metrics`, `summarize`): equal to
  `isic_challenge_scoring.SegmentationScore` (version 5.x) per image and overall;
* torch / torchmetrics, for training and validation (`dermaseg.train.torch_metrics`): the same
  per-image values from logits, accumulated across batches and DDP processes.

Conventions of the official scorer (isic_challenge_scoring/segmentation.py, metrics.py):

* an 8-bit mask pixel is lesion when its value is > 128 (a 0/1 mask is therefore all background);
* per image, from the confusion counts TP, FP, FN, TN:
  accuracy = (TP + TN) / (TP + TN + FP + FN);
  sensitivity = TP / (TP + FN), 1 when TP + FN = 0 (no lesion in the truth);
  specificity = TN / (TN + FP), 1 when TN + FP = 0 (all lesion in the truth);
  jaccard (IoU) = TP / (TP + FP + FN), 1 when TP + FP + FN = 0 (both empty);
  dice = 2 TP / (2 TP + FP + FN), 1 when TP + FP + FN = 0;
  threshold_jaccard = jaccard if jaccard >= 0.65 else 0 (the ISIC 2018 ranking metric);
  precision (PPV; not reported by the scorer, its `binary_ppv`) = TP / (TP + FP),
  1 when TP + FP = 0;
* overall: the unweighted mean of the per-image values (macro average).

`pooled_metrics` is the other common convention, clearly not the ISIC one: sum the confusion
counts over all images first, then apply the formulas once (micro average).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from dermaseg.errors import DermasegError

METRIC_NAMES = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "dice",
    "jaccard",
    "threshold_jaccard",
)
JACCARD_THRESHOLD = 0.65
MASK_THRESHOLD = 128  # a pixel is lesion when its 8-bit value is > 128


class Confusion(NamedTuple):
    """Pixel counts of one image (or of several, summed)."""

    tp: int
    fp: int
    fn: int
    tn: int


def binarize(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Boolean lesion mask: bool arrays as they are, integer arrays `> 128` (the scorer's rule).

    Raises:
        DermasegError: for float arrays (ambiguous: probabilities or 0..255?).
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        return mask > MASK_THRESHOLD
    raise DermasegError(
        f"{name}: expected an 8-bit 0/255 mask or a boolean mask, got dtype {mask.dtype}"
    )


def confusion(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    """Confusion counts of a predicted and a true mask of the same shape.

    Args:
        pred: (H, W) uint8 mask (lesion where > 128) or boolean mask.
        truth: the true mask, in the same form and shape.

    Raises:
        DermasegError: when the shapes differ or a mask is not uint8/boolean.
    """
    p, t = binarize(pred, "prediction"), binarize(truth, "truth")
    if p.shape != t.shape:
        raise DermasegError(f"prediction has shape {p.shape}, truth has shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return Confusion(tp, fp, fn, int(p.size) - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    """num / den, and 1.0 (the scorer's "freebie") when den == 0."""
    return 1.0 if den == 0 else num / den


def metrics_from_confusion(cm: Confusion, jaccard_threshold: float = JACCARD_THRESHOLD) -> dict:
    """The per-image metrics of the module docstring, as Python floats, from counts."""
    tp, fp, fn, tn = (float(v) for v in cm)
    jaccard = _ratio(tp, tp + fp + fn)
    return {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": jaccard,
        "threshold_jaccard": jaccard if jaccard >= jaccard_threshold else 0.0,
    }


def image_metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Per-image metrics of two masks (see `confusion` for the accepted masks)."""
    return metrics_from_confusion(confusion(pred, truth))


def summarize(per_image: Iterable[Mapping[str, float]] | Mapping[str, Mapping]) -> dict:
    """Overall metrics the way the official scorer computes them: the mean over images.

    Args:
        per_image: per-image metric dicts (a list, or a mapping image id -> dict).

    Raises:
        DermasegError: when there are no images.
    """
    rows = list(per_image.values()) if isinstance(per_image, Mapping) else list(per_image)
    if not rows:
        raise DermasegError("no images to summarize")
    return {name: float(np.mean([row[name] for row in rows])) for name in METRIC_NAMES}


def pooled_metrics(confusions: Iterable[Confusion]) -> dict:
    """Micro (pooled) average: confusion counts summed over images, then the formulas once.

    Not the ISIC convention (see `summarize`); big lesions weigh more than small ones.
    """
    total = np.zeros(4, dtype=np.int64)
    for cm in confusions:
        total += np.asarray(cm, dtype=np.int64)
    if not total.any():
        raise DermasegError("no images to summarize")
    return metrics_from_confusion(Confusion(*(int(v) for v in total)))
