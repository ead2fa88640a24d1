"""How far to trust a mask: signals of its probability map -> estimated Jaccard -> review flag.

    estimator = meta.quality                      # fitted by dermaseg.evaluation.calibrate
    quality = assess(estimator, probability, threshold, spread)
    quality.estimated_jaccard, quality.review, quality.reasons

The signals are read from the network's probability map inside the letterbox (the content
region of the S x S map, before it is resized to the image): the same numbers from the
checkpoint, its ONNX and TFLite exports and the service. A small linear model, fitted on
held-out predictions and stored with the model's metadata, maps them to an estimated Jaccard;
an image is flagged for review when the estimate is low or the mask is degenerate (empty, or
the whole image: a prediction that collapsed).

`spread` is the per-pixel standard deviation between views of the image (test-time flips, or
the members of an ensemble); the estimator has a second set of weights that uses it, fitted the
same way: the slower, better estimate.

torch-free (numpy and scipy only): the ONNX-only and TFLite installs use it too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

UNCERTAIN_LOW, UNCERTAIN_HIGH = 0.2, 0.8  # a pixel's probability is "uncertain" between these
EMPTY_FRACTION, WHOLE_FRACTION = 0.001, 0.98  # of the image: an empty or a whole-image mask
REVIEW_BELOW = 0.75  # default review threshold on the estimated Jaccard
FAILURE_JACCARD = 0.65  # the threshold-Jaccard cut: under it an image scores 0

ONE_PASS_SIGNALS = (
    "uncertain_ratio",  # log(1 + uncertain pixels / mask pixels): the plain baseline
    "border_margin",  # mean |2p - 1| on the mask's border (0: undecided, 1: sharp)
    "inside_margin",  # mean |2p - 1| inside the mask
    "outside_margin",  # mean |2p - 1| outside the mask
    "outside_largest",  # share of the mask outside its largest region
    "frame_contact",  # share of the image's outer frame covered by the mask
    "area_fraction",  # mask pixels / image pixels
    "degenerate",  # 1: an empty or whole-image mask
)
VIEW_SIGNALS = (*ONE_PASS_SIGNALS, "view_spread")  # log(1 + sum of 2 x std / mask pixels)


def _margin(probability: np.ndarray, where: np.ndarray, empty: float) -> float:
    if not where.any():
        return empty
    return float(np.abs(2.0 * probability[where].astype(np.float64) - 1.0).mean())


def _frame(mask: np.ndarray) -> np.ndarray:
    if min(mask.shape) <= 2:
        return mask.ravel()
    return np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])


def signals(probability: np.ndarray, threshold: float, spread: np.ndarray | None = None
            ) -> dict[str, float]:
    """The quality signals of one (h, w) probability map (the image's content, no padding).

    `spread`: (h, w) standard deviation between views, or None (one pass)."""
    from scipy import ndimage  # imported here: every command imports ModelMeta, and so this

    mask = probability > threshold
    pixels, area = mask.size, int(mask.sum())
    uncertain = int(((probability > UNCERTAIN_LOW) & (probability < UNCERTAIN_HIGH)).sum())
    inner = np.asarray(ndimage.binary_erosion(mask, border_value=1), bool)
    outer = np.asarray(ndimage.binary_dilation(mask), bool)
    border = (mask & ~inner) | (outer & ~mask)
    labels = np.zeros(mask.shape, np.int32)
    ndimage.label(mask, output=labels)
    largest = int(np.bincount(labels.ravel())[1:].max(initial=0))
    fraction = area / pixels
    values = {
        "uncertain_ratio": math.log1p(uncertain / max(area, 1)),
        "border_margin": _margin(probability, border, 1.0),
        "inside_margin": _margin(probability, mask, 0.0),
        "outside_margin": _margin(probability, ~mask, 0.0),
        "outside_largest": 1.0 - largest / area if area else 0.0,
        "frame_contact": float(_frame(mask).mean()),
        "area_fraction": fraction,
        "degenerate": float(fraction < EMPTY_FRACTION or fraction > WHOLE_FRACTION),
    }
    if spread is not None:
        total = float(2.0 * spread.astype(np.float64).sum())
        values["view_spread"] = math.log1p(total / max(area, 1))
    return values


@dataclass(frozen=True)
class LinearEstimate:
    """Estimated Jaccard = clip(intercept + sum(weight * (signal - center) / scale), 0, 1)."""

    signals: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float

    def __call__(self, values: dict[str, float]) -> float:
        x = np.array([values[name] for name in self.signals], np.float64)
        z = (x - np.array(self.center)) / np.array(self.scale)
        return float(np.clip(self.intercept + z @ np.array(self.weights), 0.0, 1.0))

    def check(self, where: str) -> None:
        """Raises ValueError naming `where`: unknown signals, lengths or non-finite values."""
        known = set(VIEW_SIGNALS)
        unknown = [name for name in self.signals if name not in known]
        lengths = {len(self.signals), len(self.center), len(self.scale), len(self.weights)}
        numbers = [*self.center, *self.scale, *self.weights, self.intercept]
        if unknown or len(lengths) != 1:
            raise ValueError(f"{where}: signals {unknown or list(self.signals)} do not match "
                             "the weights (unknown name or different lengths)")
        if not all(math.isfinite(v) for v in numbers) or min(self.scale, default=1) <= 0:
            raise ValueError(f"{where}: weights must be finite and scales > 0")


@dataclass(frozen=True)
class QualityEstimator:
    """The fitted estimate of a model: one pass, and with views when it has them."""

    one_pass: LinearEstimate
    views: LinearEstimate | None = None
    review_below: float = REVIEW_BELOW
    fitted_on: dict[str, Any] = field(default_factory=dict)  # what it was fitted on, and how well

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> QualityEstimator:
        """Raises: ValueError naming `where`: a missing field or a bad value."""
        try:
            def numbers(part: dict[str, Any], key: str) -> tuple[float, ...]:
                return tuple(float(v) for v in part[key])

            def linear(part: dict[str, Any]) -> LinearEstimate:
                estimate = LinearEstimate(
                    tuple(str(s) for s in part["signals"]), numbers(part, "center"),
                    numbers(part, "scale"), numbers(part, "weights"), float(part["intercept"]))
                estimate.check(where)
                return estimate

            views = data.get("views")
            estimator = cls(linear(data["one_pass"]), linear(views) if views else None,
                            float(data.get("review_below", REVIEW_BELOW)),
                            dict(data.get("fitted_on", {})))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: incomplete quality estimator ({exc!r})") from exc
        if not 0 <= estimator.review_below <= 1:
            raise ValueError(f"{where}: review_below {estimator.review_below} (expected 0..1)")
        return estimator


@dataclass(frozen=True)
class Quality:
    """One mask's estimate: `estimated_jaccard` is None when the model has no estimator."""

    estimated_jaccard: float | None
    review: bool
    reasons: tuple[str, ...]
    signals: dict[str, float]
    estimate: str  # "one pass", "views" or "uncalibrated"

    def to_dict(self) -> dict[str, Any]:
        estimated = self.estimated_jaccard
        return {"estimated_jaccard": None if estimated is None else round(estimated, 4),
                "review": self.review, "reasons": list(self.reasons),
                "estimate": self.estimate,
                "signals": {name: round(value, 4) for name, value in self.signals.items()}}


def review_reasons(values: dict[str, float], estimated: float | None,
                   review_below: float) -> tuple[str, ...]:
    """Why a human should look at this mask (empty: no reason)."""
    reasons = []
    if values["area_fraction"] < EMPTY_FRACTION:
        reasons.append("empty mask: no lesion found")
    elif values["area_fraction"] > WHOLE_FRACTION:
        reasons.append("the mask covers the whole image")
    if estimated is not None and estimated < review_below:
        reasons.append(f"estimated Jaccard {estimated:.2f} < {review_below:.2f}")
    if estimated is None and values["uncertain_ratio"] > math.log1p(0.5):
        reasons.append("many uncertain pixels (no calibrated estimate for this model)")
    return tuple(reasons)


def assess(estimator: QualityEstimator | None, probability: np.ndarray, threshold: float,
           spread: np.ndarray | None = None) -> Quality:
    """The quality of the mask `probability > threshold` (see `signals`)."""
    values = signals(probability, threshold, spread)
    linear, name = None, "uncalibrated"
    if estimator is not None:
        use_views = spread is not None and estimator.views is not None
        linear = estimator.views if use_views else estimator.one_pass
        name = "views" if use_views else "one pass"
    estimated = linear(values) if linear is not None else None
    review_below = estimator.review_below if estimator is not None else REVIEW_BELOW
    reasons = review_reasons(values, estimated, review_below)
    return Quality(estimated, bool(reasons), reasons, values, name)


def uncertainty_map(probability: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 255 where the probability is 0.5, 0 where it is 0 or 1 (1 - |2p - 1|)."""
    certainty = np.abs(2.0 * probability.astype(np.float32) - 1.0)
    return np.round(255.0 * (1.0 - np.clip(certainty, 0.0, 1.0))).astype(np.uint8)
