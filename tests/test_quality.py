"""The mask quality estimate's signals, estimator and review rules (dermaseg.quality), on
constructed probability maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from dermaseg.config import Config
from dermaseg.errors import DermasegError
from dermaseg.evaluation.calibrate import fit_linear
from dermaseg.model_meta import ModelMeta
from dermaseg.quality import (
    ONE_PASS_SIGNALS,
    VIEW_SIGNALS,
    QualityEstimator,
    assess,
    signals,
    uncertainty_map,
)


def disc(size: int = 64, radius: float = 16, centre=(32, 32)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.float32)


def sharp(mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 0.5, 0.97, 0.03).astype(np.float32)


def estimator(weights: dict[str, float], intercept: float = 0.8) -> QualityEstimator:
    names = tuple(weights)
    linear = {"signals": names, "center": [0.0] * len(names), "scale": [1.0] * len(names),
              "weights": list(weights.values()), "intercept": intercept}
    return QualityEstimator.from_dict({"one_pass": linear}, "test")


def test_an_empty_mask_is_flagged_and_degenerate():
    quality = assess(None, np.full((64, 64), 0.02, np.float32), 0.5)
    assert quality.signals["area_fraction"] == 0 and quality.signals["degenerate"] == 1
    assert quality.review and quality.reasons[0].startswith("empty mask")
    assert quality.estimated_jaccard is None and quality.estimate == "uncalibrated"


def test_a_whole_image_mask_is_flagged():
    quality = assess(None, np.full((40, 64), 0.99, np.float32), 0.5)
    assert quality.signals["degenerate"] == 1 and quality.signals["frame_contact"] == 1
    assert quality.review and "whole image" in quality.reasons[0]


def test_a_confident_disc_is_not_flagged():
    quality = assess(None, sharp(disc()), 0.5)
    assert not quality.review and quality.reasons == ()
    values = quality.signals
    assert values["uncertain_ratio"] == 0 and values["border_margin"] == pytest.approx(0.94)
    assert values["outside_largest"] == 0 and values["frame_contact"] == 0
    assert values["area_fraction"] == pytest.approx(disc().mean())


def test_a_blurred_map_is_less_certain_than_a_sharp_one():
    mask = disc()
    blurred = ndimage.gaussian_filter(sharp(mask), 6)
    soft, hard = signals(blurred, 0.5), signals(sharp(mask), 0.5)
    assert soft["uncertain_ratio"] > hard["uncertain_ratio"] + 0.3
    assert soft["border_margin"] < hard["border_margin"] - 0.5
    quality = assess(None, blurred, 0.5)  # uncalibrated: the uncertain-pixel rule flags it
    assert quality.review and "uncertain pixels" in quality.reasons[0]


def test_regions_apart_and_at_the_frame_are_seen():
    two = np.maximum(disc(radius=12, centre=(20, 20)), disc(radius=6, centre=(50, 50)))
    values = signals(sharp(two), 0.5)
    small = disc(radius=6).sum()
    assert values["outside_largest"] == pytest.approx(small / two.sum(), rel=0.05)
    edge = signals(sharp(disc(radius=20, centre=(32, 0))), 0.5)
    assert edge["frame_contact"] > 0.1


def test_the_estimate_and_its_review_threshold():
    quality = assess(estimator({"uncertain_ratio": -1.0}), ndimage.gaussian_filter(
        sharp(disc()), 4), 0.5)
    expected = 0.8 - quality.signals["uncertain_ratio"]
    assert quality.estimated_jaccard == pytest.approx(max(0.0, expected))
    assert quality.review == (expected < 0.75)
    confident = assess(estimator({"uncertain_ratio": -1.0}), sharp(disc()), 0.5)
    assert confident.estimated_jaccard == pytest.approx(0.8) and not confident.review
    assert confident.estimate == "one pass"


def test_views_use_their_own_weights_when_there_is_a_spread():
    one = {"signals": ["area_fraction"], "center": [0], "scale": [1], "weights": [0],
           "intercept": 0.9}
    views = {"signals": list(VIEW_SIGNALS), "center": [0] * 9, "scale": [1] * 9,
             "weights": [0] * 8 + [-1.0], "intercept": 0.9}
    fitted = QualityEstimator.from_dict({"one_pass": one, "views": views}, "test")
    probability = sharp(disc())
    spread = np.full_like(probability, 0.05)
    with_views = assess(fitted, probability, 0.5, spread)
    assert with_views.estimate == "views"
    assert with_views.estimated_jaccard == pytest.approx(
        0.9 - math.log1p(2 * 0.05 * probability.size / (probability > 0.5).sum()))
    assert assess(fitted, probability, 0.5).estimated_jaccard == pytest.approx(0.9)


def test_fit_linear_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    rows = [dict(zip(ONE_PASS_SIGNALS, rng.uniform(0, 1, len(ONE_PASS_SIGNALS)), strict=True))
            for _ in range(300)]
    target = np.array([0.9 - 0.3 * row["uncertain_ratio"] + 0.1 * row["border_margin"]
                       for row in rows])
    linear = fit_linear(rows, target, ONE_PASS_SIGNALS, ridge=1e-6)
    predicted = np.array([linear(row) for row in rows])
    assert np.abs(predicted - target).max() < 1e-4


def meta_with(quality: dict) -> dict:
    meta = ModelMeta.from_config(Config().updated({"model.backbone": "resnet18"})).to_dict()
    return {**meta, "quality": quality}


def test_the_estimator_survives_the_metadata_round_trip():
    fitted = estimator({"uncertain_ratio": -0.5, "frame_contact": -0.2})
    meta = ModelMeta.from_config(Config().updated({"model.backbone": "resnet18"}))
    text = json.dumps(meta.with_quality(fitted).to_dict())
    back = ModelMeta.from_dict(json.loads(text), "model.onnx")
    assert back.quality == fitted
    assert "quality" not in meta.to_dict()  # no estimator: the metadata of before


@pytest.mark.parametrize("broken, message", [
    ({"one_pass": {"signals": ["sharpness"], "center": [0], "scale": [1], "weights": [1],
                   "intercept": 0}}, "sharpness"),
    ({"one_pass": {"signals": ["area_fraction"], "center": [0], "scale": [0], "weights": [1],
                   "intercept": 0}}, "scales > 0"),
    ({"one_pass": {"signals": ["area_fraction"], "center": [0, 1], "scale": [1],
                   "weights": [1], "intercept": 0}}, "different lengths"),
    ({"one_pass": {"signals": ["area_fraction"], "center": [0], "scale": [1],
                   "weights": [float("nan")], "intercept": 0}}, "finite"),
    ({"views": None}, "incomplete quality estimator"),
])
def test_a_damaged_estimator_is_refused_naming_the_file(broken, message):
    with pytest.raises(DermasegError, match=message) as error:
        ModelMeta.from_dict(meta_with(broken), "model.onnx")
    assert "model.onnx: quality" in str(error.value)


def test_uncertainty_map_is_255_at_one_half_and_0_when_sure():
    probability = np.array([[0.0, 0.5, 1.0, 0.75]], np.float32)
    assert uncertainty_map(probability).tolist() == [[0, 255, 0, 128]]
