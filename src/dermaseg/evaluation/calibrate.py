"""Fit a model's quality estimator (dermaseg.quality) on images it did not train on.

    estimator = fit_quality(predictor, items)    # items: (id, image, mask) of a held-out split

Each held-out image is predicted as it is and after a few degradations of the kind a photo
from another clinic brings (darker, lighter, a colour cast, blur, noise, low contrast, a lesion
cut by the frame): the degraded copies widen the range of actual Jaccard values, so that the
estimate sees failures that a small validation split rarely holds. For every copy the signals
are read once without and once with the four test-time flips; a ridge regression maps each
set to the actual Jaccard (`one_pass` and `views` of the estimator). Which signals it uses, and
how strongly it is regularised, is chosen by cross-validation over the fitting images (an
image and its copies in the same fold): a handful of validation images supports fewer signals
than a few hundred.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from dermaseg.errors import DermasegError
from dermaseg.evaluation.metrics import confusion, metrics_from_confusion
from dermaseg.evaluation.quality_check import auroc, spearman
from dermaseg.geometry import restore_probability
from dermaseg.infer.tta import TTAConfig, tta_probability
from dermaseg.progress import progress as progress_bar
from dermaseg.quality import (
    FAILURE_JACCARD,
    ONE_PASS_SIGNALS,
    LinearEstimate,
    QualityEstimator,
    signals,
)

MIN_IMAGES = 5
# The signal sets and ridge strengths tried; grouped cross-validation on the fitting images
# picks one (`select_and_fit`): fewer signals when a few images cannot support them all.
CANDIDATE_SIGNALS = (
    ("uncertain_ratio", "degenerate"),
    ("uncertain_ratio", "degenerate", "border_margin"),
    ("uncertain_ratio", "degenerate", "border_margin", "frame_contact", "outside_largest"),
    ONE_PASS_SIGNALS,
)
RIDGES = (1.0, 10.0)
FOLDS = 5


def _gamma(power: float) -> Callable:
    table = np.round(255.0 * (np.arange(256) / 255.0) ** power).astype(np.uint8)
    return lambda image, truth, rng: (table[image], truth)


def _cast(image, truth, rng):
    gains = rng.uniform(0.7, 1.3, size=3)
    return np.clip(image * gains, 0, 255).astype(np.uint8), truth


def _blur(image, truth, rng):
    radius = 0.015 * max(image.shape[:2])
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))), truth


def _noise(image, truth, rng):
    noisy = image + rng.normal(0.0, 18.0, size=image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), truth


def _low_contrast(image, truth, rng):
    mean = image.reshape(-1, 3).mean(axis=0)
    return (0.45 * image + 0.55 * mean).astype(np.uint8), truth


def _zoom_in(image, truth, rng):
    """A window of 60 % of each side: the lesion larger than the frame, cut by it."""
    height, width = truth.shape
    h, w = max(1, int(0.6 * height)), max(1, int(0.6 * width))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return image[top:top + h, left:left + w], truth[top:top + h, left:left + w]


DEGRADATIONS: dict[str, Callable] = {
    "darker": _gamma(1.8), "lighter": _gamma(0.55), "colour_cast": _cast, "blur": _blur,
    "noise": _noise, "low_contrast": _low_contrast, "zoom_in": _zoom_in,
}


@dataclass
class Row:
    image_id: str
    degradation: str
    one_pass: dict[str, float]
    one_pass_jaccard: float
    views: dict[str, float]
    views_jaccard: float


def _views(predictor, images: list[np.ndarray]):
    """(plain probability, 4-flip mean, 4-flip spread, Letterbox) per image, from one run
    of the four flips: the plain pass is the first view."""
    if predictor.backend is None:
        raise DermasegError("the quality estimate is fitted for one model, not an ensemble")
    prepared = [predictor.preprocessing(image) for image in images]
    batch = np.stack([array for array, _ in prepared])
    plain, _ = tta_probability(predictor.backend, batch, TTAConfig(flips=("none",)))
    others, spread = tta_probability(predictor.backend, batch, TTAConfig(flips=("h", "v", "hv")))
    mean = (plain + 3.0 * others) / 4.0
    squares = (plain * plain + 3.0 * (spread * spread + others * others)) / 4.0
    together = np.sqrt(np.maximum(squares - mean * mean, 0.0))
    return [(plain[k], mean[k], together[k], box) for k, (_, box) in enumerate(prepared)]


def _measure(probability: np.ndarray, spread, box, threshold: float, truth: np.ndarray):
    """(signals, actual Jaccard) of one network output."""
    values = signals(box.crop(probability), threshold,
                     None if spread is None else box.crop(spread))
    restored = restore_probability(probability, box)
    return values, metrics_from_confusion(confusion(restored > threshold, truth))["jaccard"]


def _rows(predictor, copies: list[tuple[str, str, np.ndarray, np.ndarray]]) -> list[Row]:
    threshold = predictor.threshold
    outputs = _views(predictor, [image for _, _, image, _ in copies])
    rows = []
    for (image_id, kind, _, truth), (plain, mean, spread, box) in zip(copies, outputs,
                                                                      strict=True):
        one, one_jaccard = _measure(plain, None, box, threshold, truth)
        many, many_jaccard = _measure(mean, spread, box, threshold, truth)
        rows.append(Row(image_id, kind, one, one_jaccard, many, many_jaccard))
    return rows


def _copies(image_id: str, image: np.ndarray, truth: np.ndarray, seed: int, degrade: bool):
    """The image as it is, then one copy per degradation (seeded by the image's id)."""
    copies = [(image_id, "none", image, truth)]
    if degrade:
        rng = np.random.default_rng([seed, *image_id.encode("utf-8", "surrogateescape")])
        for kind, apply in DEGRADATIONS.items():
            copies.append((image_id, kind, *apply(image, truth, rng)))
    return copies


def calibration_rows(predictor, pairs, count: int, *, seed: int = 0, degrade: bool = True,
                     progress: bool = True) -> list[Row]:
    """Rows for `pairs`: (id, image HxWx3 uint8, truth HxW bool) of the same size."""
    rows: list[Row] = []
    with progress_bar(total=count, desc="calibrate", unit="image", enabled=progress) as bar:
        for image_id, image, truth in pairs:
            rows += _rows(predictor, _copies(image_id, image, truth, seed, degrade))
            bar.update(1)
    return rows


def fit_linear(rows: list[dict[str, float]], target: np.ndarray, names: tuple[str, ...],
               ridge: float = 1.0) -> LinearEstimate:
    """Ridge regression of `target` on the standardised signals `names` of `rows`."""
    x = np.array([[row[name] for name in names] for row in rows], np.float64)
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant signal: weight 0 after the ridge
    z = (x - center) / scale
    intercept = float(target.mean())
    weights = np.linalg.solve(z.T @ z + ridge * np.eye(len(names)), z.T @ (target - intercept))
    return LinearEstimate(names, tuple(center.tolist()), tuple(scale.tolist()),
                          tuple(weights.tolist()), intercept)


def cross_validated_error(rows: list[dict[str, float]], target: np.ndarray, groups: list[str],
                          names: tuple[str, ...], ridge: float) -> float:
    """Mean absolute error of `fit_linear` on held-out folds of whole groups (an image and its
    degraded copies stay together)."""
    order = sorted(set(groups))
    np.random.default_rng(0).shuffle(order)
    fold_of = {group: index % FOLDS for index, group in enumerate(order)}
    folds = np.array([fold_of[group] for group in groups])
    errors = np.zeros(len(rows))
    for fold in range(min(FOLDS, len(order))):
        train = np.flatnonzero(folds != fold)
        linear = fit_linear([rows[k] for k in train], target[train], names, ridge)
        for k in np.flatnonzero(folds == fold):
            errors[k] = abs(linear(rows[k]) - target[k])
    return float(errors.mean())


def select_and_fit(rows: list[dict[str, float]], target: np.ndarray, groups: list[str],
                   extra: tuple[str, ...] = ()) -> tuple[LinearEstimate, dict]:
    """The candidate signal set (each with `extra`) and ridge of least cross-validated error,
    fitted on all rows; and what was chosen."""
    error, names, ridge = min(
        (cross_validated_error(rows, target, groups, (*names, *extra), ridge), names, ridge)
        for names in CANDIDATE_SIGNALS for ridge in RIDGES)
    chosen = {"signals": [*names, *extra], "ridge": ridge,
              "cross_validated_mean_absolute_error": round(error, 4)}
    return fit_linear(rows, target, (*names, *extra), ridge), chosen


def _fit_report(estimate: LinearEstimate, rows: list[dict], actual: np.ndarray) -> dict:
    estimated = np.array([estimate(row) for row in rows])
    return {"mean_absolute_error": round(float(np.abs(estimated - actual).mean()), 4),
            "spearman": spearman(estimated, actual),
            "auroc": auroc(-estimated, actual < FAILURE_JACCARD)}


def fit_estimator(rows: list[Row], about: dict) -> QualityEstimator:
    """The estimator fitted on `rows`; `about` (what the rows are) goes into `fitted_on`.

    Raises:
        DermasegError: fewer than MIN_IMAGES images.
    """
    images = len({row.image_id for row in rows})
    if images < MIN_IMAGES:
        raise DermasegError(f"{images} held-out images: the quality estimate needs at least "
                            f"{MIN_IMAGES} (a validation split, or --split)")
    one_target = np.array([row.one_pass_jaccard for row in rows])
    view_target = np.array([row.views_jaccard for row in rows])
    groups = [row.image_id for row in rows]
    one, one_chosen = select_and_fit([row.one_pass for row in rows], one_target, groups)
    views, views_chosen = select_and_fit([row.views for row in rows], view_target, groups,
                                         ("view_spread",))
    fitted_on = {**about, "images": images, "samples": len(rows),
                 "degradations": sorted({row.degradation for row in rows} - {"none"}),
                 "chosen": {"one_pass": one_chosen, "views": views_chosen},
                 "in_sample": {"one_pass": _fit_report(one, [r.one_pass for r in rows],
                                                       one_target),
                               "views": _fit_report(views, [r.views for r in rows],
                                                    view_target)}}
    return QualityEstimator(one, views, fitted_on=fitted_on)


def held_out_pairs(items: list[tuple[str, Path, Path]], draft_size: int):
    """(id, image, truth) per pair of `items`, the image decoded as `predict` decodes it
    (reduced for a big JPEG) and the truth resized to it (nearest).

    Raises:
        DermasegError: a pair cannot be read.
    """
    from dermaseg.evaluation.evaluate import iter_pairs

    for image_id, _, decoded, truth, problem in iter_pairs(items, draft_size):
        if problem is not None:
            raise DermasegError(problem)
        image = decoded[0]
        if truth.shape != image.shape[:2]:
            small = Image.fromarray(truth).resize((image.shape[1], image.shape[0]),
                                                  Image.Resampling.NEAREST)
            truth = np.asarray(small)
        yield image_id, image, truth > 128


def fit_quality(predictor, items: list[tuple[str, Path, Path]], about: dict, *,
                degrade: bool = True, progress: bool = True) -> QualityEstimator:
    """The estimator of `predictor`'s model, fitted on the held-out `items` (id, image path,
    mask path) and their degraded copies; `about` names them in `fitted_on`.

    Raises:
        DermasegError: a pair cannot be read, or fewer than MIN_IMAGES items.
    """
    if len(items) < MIN_IMAGES:
        raise DermasegError(f"{len(items)} held-out images: the quality estimate needs at "
                            f"least {MIN_IMAGES} (a validation split, or --split)")
    pairs = held_out_pairs(items, predictor.meta.image_size)
    rows = calibration_rows(predictor, pairs, len(items), degrade=degrade, progress=progress)
    return fit_estimator(rows, about)
