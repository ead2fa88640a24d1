"""The learning rate for the plan's batch size (`dermaseg.train.batch_rule`)."""

from __future__ import annotations

import math

import pytest

from dermaseg.config_io import load_config
from dermaseg.train.batch_rule import WARMUP_EPOCHS, scale_for_batch


def optim(*extra: str):
    return load_config(None, ["optim.lr=0.001", "optim.warmup_epochs=0", *extra]).optim


def scaled(batch: int, *extra: str, epochs: int = 100):
    return scale_for_batch(optim(*extra), 8, batch, epochs)


def test_the_recipe_batch_keeps_the_recipe_rate():
    rule = scaled(8)
    assert (rule.lr, rule.warmup_epochs) == (0.001, 0)
    assert "the recipe's" in rule.reason


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adaptive_optimisers_take_the_square_root_rule(name):
    rule = scaled(32, f"optim.name={name}")
    assert rule.lr == pytest.approx(0.002) and rule.warmup_epochs == WARMUP_EPOCHS
    assert "sqrt(32/8)" in rule.reason and "5 epochs" in rule.reason
    config = load_config(None, [f"optim.name={name}"]).updated(rule.overrides())
    assert (config.optim.lr, config.optim.warmup_epochs) == (0.002, 5)


def test_sgd_takes_the_linear_rule():
    rule = scaled(16, "optim.name=sgd")
    assert rule.lr == pytest.approx(0.002) and "linear rule" in rule.reason


def test_a_smaller_batch_lowers_the_rate_without_a_warm_up():
    rule = scaled(2, "optim.warmup_epochs=1")
    assert rule.lr == pytest.approx(0.001 * math.sqrt(2 / 8), rel=1e-3)
    assert rule.warmup_epochs == 1  # the recipe's


def test_the_warm_up_fits_the_run():
    assert scaled(16, epochs=20).warmup_epochs == 2  # a tenth of the run
    assert scaled(16, epochs=3).warmup_epochs == 1  # at least one
    assert scaled(16, "optim.warmup_epochs=8").warmup_epochs == 8  # the recipe's longer one
