"""Audit regressions for the losses."""

from __future__ import annotations

import pytest
import torch

from dermaseg.config import LossConfig
from dermaseg.errors import DermasegError
from dermaseg.train.losses import SegmentationLoss


def test_negative_focal_gamma_is_refused():
    # gamma < 0 gives (1 - p_t) ** gamma = inf for a confident right answer: NaN loss.
    with pytest.raises(DermasegError, match="loss.focal_gamma"):
        SegmentationLoss(LossConfig(focal=1.0, focal_gamma=-1.0))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradients_finite_for_saturated_logits(gamma):
    logits = torch.tensor([[[[30.0, -30.0, 1e4, -1e4]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0, 1.0, 1.0]]]])
    config = LossConfig(dice=1.0, bce=1.0, focal=1.0, focal_gamma=gamma, label_smoothing=0.1)
    total, _ = SegmentationLoss(config)(logits, target)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
