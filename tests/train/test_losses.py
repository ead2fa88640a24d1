"""Golden values of the losses on tiny hand-made tensors, empty/full masks, and autocast."""

from __future__ import annotations

import math

import pytest
import torch

from dermaseg.config import LossConfig
from dermaseg.errors import DermasegError
from dermaseg.train.losses import (
    SegmentationLoss,
    bce_loss,
    boundary_loss,
    boundary_target,
    focal_loss,
    soft_dice_loss,
)

BIG = 30.0  # a logit whose sigmoid is 1 to float32 precision


def t(rows) -> torch.Tensor:
    """A (1, 1, H, W) float tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_soft_dice_golden():
    logits = t([[0.0, 0.0], [0.0, 0.0]])  # p = 0.5 everywhere
    target = t([[1.0, 0.0], [0.0, 0.0]])
    # (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-7)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - 1 / 3, abs=1e-7)


def test_soft_dice_per_image_then_mean():
    logits = torch.cat([t([[BIG, -BIG]]), t([[-BIG, -BIG]])])  # 2 images of 1x2
    target = torch.cat([t([[1.0, 0.0]]), t([[1.0, 1.0]])])
    # image 1 perfect: loss 0; image 2: (0 + 1) / (0 + 2 + 1) -> loss 2/3
    assert soft_dice_loss(logits, target).item() == pytest.approx((0 + 2 / 3) / 2, abs=1e-6)


def test_empty_and_full_masks():
    empty = torch.zeros(2, 1, 4, 4)
    full = torch.ones(2, 1, 4, 4)
    assert soft_dice_loss(torch.full_like(empty, -BIG), empty).item() == pytest.approx(0, abs=1e-6)
    assert soft_dice_loss(torch.full_like(full, BIG), full).item() == pytest.approx(0, abs=1e-6)
    # empty truth, confident lesion everywhere: dice = 1 / (16 + 1)
    assert soft_dice_loss(torch.full_like(empty, BIG), empty).item() == pytest.approx(
        1 - 1 / 17, abs=1e-6
    )
    for loss in (bce_loss, focal_loss):
        assert loss(torch.full_like(empty, -BIG), empty).item() == pytest.approx(0, abs=1e-6)
        assert loss(torch.full_like(full, BIG), full).item() == pytest.approx(0, abs=1e-6)
        assert math.isfinite(loss(torch.full_like(full, -BIG), full).item())


def test_bce_golden_with_pos_weight_and_smoothing():
    logits = t([[2.0, -1.0]])
    target = t([[1.0, 0.0]])
    plain = (-math.log(sig(2.0)) - math.log(1 - sig(-1.0))) / 2
    assert bce_loss(logits, target).item() == pytest.approx(plain, rel=1e-6)
    weighted = (-3 * math.log(sig(2.0)) - math.log(1 - sig(-1.0))) / 2
    assert bce_loss(logits, target, pos_weight=3.0).item() == pytest.approx(weighted, rel=1e-6)
    # alpha 0.2: targets 0.9 and 0.1
    smoothed = (
        -(0.9 * math.log(sig(2.0)) + 0.1 * math.log(1 - sig(2.0)))
        - (0.1 * math.log(sig(-1.0)) + 0.9 * math.log(1 - sig(-1.0)))
    ) / 2
    got = bce_loss(logits, target, label_smoothing=0.2).item()
    assert got == pytest.approx(smoothed, rel=1e-6)


def test_focal_golden():
    logits = t([[1.0, -2.0]])
    target = t([[1.0, 1.0]])
    p1, p2 = sig(1.0), sig(-2.0)
    want = ((1 - p1) ** 2 * -math.log(p1) + (1 - p2) ** 2 * -math.log(p2)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(want, rel=1e-6)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(
        bce_loss(logits, target).item(), rel=1e-6
    )


def test_boundary_target_band():
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 2:7, 2:7] = 1  # a 5x5 square
    band1 = boundary_target(mask, width=1)[0, 0]
    inner_ring = torch.zeros(9, 9)
    inner_ring[2:7, 2:7] = 1
    inner_ring[3:6, 3:6] = 0
    assert torch.equal(band1, inner_ring)
    band3 = boundary_target(mask, width=3)[0, 0]
    want3 = torch.zeros(9, 9)
    want3[1:8, 1:8] = 1  # one pixel outside ...
    want3[4, 4] = 0  # ... and two inside
    assert torch.equal(band3, want3)
    # (N, H, W) input works; empty and full masks have no contour
    assert boundary_target(mask[:, 0], 3).shape == (1, 1, 9, 9)
    assert boundary_target(torch.zeros(1, 9, 9)).sum() == 0
    assert boundary_target(torch.ones(1, 1, 9, 9)).sum() == 0
    with pytest.raises(ValueError):
        boundary_target(mask, 0)


def test_boundary_loss_is_bce_against_band():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    band = boundary_target(mask, 2)
    perfect = (band * 2 - 1) * BIG
    assert boundary_loss(perfect, mask, 2).item() == pytest.approx(0, abs=1e-6)
    assert boundary_loss(torch.zeros(1, 1, 8, 8), mask, 2).item() == pytest.approx(
        math.log(2), rel=1e-6
    )


def test_segmentation_loss_combines_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    edge = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    cfg = LossConfig(
        dice=0.5,
        bce=2.0,
        focal=1.5,
        focal_gamma=1.0,
        pos_weight=2.0,
        label_smoothing=0.1,
        boundary=0.3,
        boundary_width=2,
    )
    total, parts = SegmentationLoss(cfg)({"mask": logits, "edge": edge}, target[:, 0])
    assert set(parts) == {"dice", "bce", "focal", "boundary"}
    want = (
        0.5 * soft_dice_loss(logits, target)
        + 2.0 * bce_loss(logits, target, 2.0, 0.1)
        + 1.5 * focal_loss(logits, target, 1.0, 0.1)
        + 0.3 * boundary_loss(edge, target, 2)
    )
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # the default is Dice + BCE, and a bare tensor works
    total, parts = SegmentationLoss()(logits.detach(), target)
    assert set(parts) == {"dice", "bce"}
    assert total.item() == pytest.approx((parts["dice"] + parts["bce"]).item(), rel=1e-6)


def test_segmentation_loss_errors():
    with pytest.raises(DermasegError, match="edge_head"):
        SegmentationLoss(LossConfig(boundary=1.0))(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(DermasegError, match="every weight"):
        SegmentationLoss(LossConfig(dice=0, bce=0))
    with pytest.raises(DermasegError, match="label_smoothing"):
        SegmentationLoss(LossConfig(label_smoothing=1.5))
    with pytest.raises(DermasegError, match="pos_weight"):
        SegmentationLoss(LossConfig(pos_weight=-1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_finite_under_autocast(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(2, 3, 16, 16) * 100  # extreme logits
    target = torch.zeros(2, 1, 16, 16)
    target[1, :, 4:12, 4:12] = 1  # one empty mask, one lesion
    cfg = LossConfig(dice=1, bce=1, focal=1, boundary=1, pos_weight=5.0, label_smoothing=0.1)
    with torch.autocast("cpu", dtype=dtype):
        out = conv(x)
        assert out.dtype == dtype
        total, parts = SegmentationLoss(cfg)({"mask": out[:, :1], "edge": out[:, 1:]}, target)
    assert total.dtype == torch.float32
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    total.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_pos_weight_first_used_under_inference_mode_still_trains():
    """The device constant behind `pos_weight` is made once and cached: made first under
    torch.inference_mode (an evaluation, Lightning's validation), it must still serve a later
    training step's backward."""
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    with torch.inference_mode():
        bce_loss(logits, target, pos_weight=2.75)  # a weight no other test uses: a new entry
    x = logits.clone().requires_grad_(True)
    bce_loss(x, target, pos_weight=2.75).backward()
    assert torch.isfinite(x.grad).all()
