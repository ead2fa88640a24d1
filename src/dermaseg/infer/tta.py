"""Test-time augmentation: flips and optional rescales, averaged in probability space.

Each view is made from the letterboxed network input (N, 3, S, S); the model's logits for the
view are turned into probabilities, mapped back onto the original view (flipped back, resized
back to S x S) and the views are averaged. Averaging probabilities, not logits, is what the
ISIC entries that used TTA did, and keeps a single confident view from dominating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dermaseg.errors import UsageError

FLIPS = {"none": (), "h": (3,), "v": (2,), "hv": (2, 3)}


@dataclass(frozen=True)
class TTAConfig:
    flips: tuple[str, ...] = ("none", "h", "v", "hv")  # keys of FLIPS
    scales: tuple[float, ...] = (1.0,)  # input side multipliers, e.g. (0.75, 1.0, 1.25)

    def __post_init__(self) -> None:
        unknown = [f for f in self.flips if f not in FLIPS]
        if unknown or not self.flips:
            raise UsageError(f"tta flips: {unknown or 'none given'}; valid: {', '.join(FLIPS)}")
        if not self.scales or any(not 0.25 <= s <= 4.0 for s in self.scales):
            raise UsageError(f"tta scales: {self.scales}: each must be within 0.25..4")

    @property
    def views(self) -> int:
        return len(self.flips) * len(self.scales)


def scaled_side(size: int, scale: float) -> int:
    """Side of the rescaled input: `size` itself at scale 1 (that view is never resampled),
    else a multiple of 8 (the smallest DeepLab output stride)."""
    if scale == 1.0:
        return size
    return max(8, int(round(size * scale / 8)) * 8)


def tta_probability(
    run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, config: TTAConfig
) -> np.ndarray:
    """Mean sigmoid probability over the views of `batch`.

    Args:
        run: the model, float32 (N, 3, H, W) -> logits (N, 1, H, W) as numpy.
        batch: normalised float32 (N, 3, S, S).
    Returns:
        float32 (N, S, S) probabilities.
    """
    size = batch.shape[-1]
    source = torch.from_numpy(batch)
    total = torch.zeros((batch.shape[0], 1, size, size), dtype=torch.float32)
    for scale in config.scales:
        side = scaled_side(size, scale)
        scaled = source if side == size else F.interpolate(
            source, size=(side, side), mode="bilinear", align_corners=False
        )
        for flip in config.flips:
            dims = FLIPS[flip]
            view = torch.flip(scaled, dims) if dims else scaled
            prob = torch.sigmoid(torch.from_numpy(run(view.contiguous().numpy())).float())
            if dims:
                prob = torch.flip(prob, dims)
            if side != size:
                prob = F.interpolate(prob, size=(size, size), mode="bilinear", align_corners=False)
            total += prob
    return (total[:, 0] / config.views).numpy()
