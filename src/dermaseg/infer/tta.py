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
from scipy.special import expit

from dermaseg.errors import UsageError

FLIPS = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}  # axes of an (N, C, H, W) batch


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


def tta_config(tta: bool, scales: str | None) -> TTAConfig | None:
    """--tta (the four flips) and --tta-scales "0.75,1,1.25" -> TTAConfig, or None.

    Raises:
        UsageError: `scales` is not a comma list of numbers, or a value out of range.
    """
    if not tta and scales is None:
        return None
    flips = ("none", "h", "v", "hv") if tta else ("none",)
    if scales is None:
        return TTAConfig(flips=flips)
    try:
        values = tuple(float(v) for v in scales.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"--tta-scales {scales}: expected numbers like 0.75,1,1.25") from exc
    return TTAConfig(flips=flips, scales=values)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities, computed in float64: each is the correctly rounded value, so
    logits that differ in the last bits (another batch size) rarely cross the threshold."""
    return expit(logits.astype(np.float64)).astype(np.float32)


def scaled_side(size: int, scale: float) -> int:
    """Side of the rescaled input: `size` itself at scale 1 (that view is never resampled),
    else a multiple of 8 (the smallest DeepLab output stride)."""
    if scale == 1.0:
        return size
    return max(8, int(round(size * scale / 8)) * 8)


def _resize_weights(size: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and high's weight for each of `side` output positions: the
    sampling of torch's bilinear interpolate with align_corners=False (no antialiasing)."""
    source = (np.arange(side, dtype=np.float64) + 0.5) * (size / side) - 0.5
    source = np.maximum(source, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size - 1)
    high = np.minimum(low + 1, size - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(batch: np.ndarray, side: int) -> np.ndarray:
    """(N, C, H, W) float32 -> (N, C, side, side), separably along H then W."""
    rows_low, rows_high, row_weight = _resize_weights(batch.shape[-2], side)
    cols_low, cols_high, col_weight = _resize_weights(batch.shape[-1], side)
    row_weight = row_weight[:, None]
    rows = batch[..., rows_low, :] * (1 - row_weight) + batch[..., rows_high, :] * row_weight
    return rows[..., cols_low] * (1 - col_weight) + rows[..., cols_high] * col_weight


def tta_probability(
    run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, config: TTAConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Mean sigmoid probability over the views of `batch`, and its spread.

    Args:
        run: the model, float32 (N, 3, H, W) -> logits (N, 1, H, W) as numpy.
        batch: normalised float32 (N, 3, S, S).
    Returns:
        float32 (N, S, S) probabilities, and float32 (N, S, S) per-pixel standard deviation
        between the views (the quality estimate's view signal).
    """
    size = batch.shape[-1]
    total = np.zeros((batch.shape[0], 1, size, size), dtype=np.float32)
    squares = np.zeros_like(total)
    for scale in config.scales:
        side = scaled_side(size, scale)
        scaled = batch if side == size else resize_bilinear(batch, side)
        for flip in config.flips:
            axes = FLIPS[flip]
            view = np.flip(scaled, axes) if axes else scaled
            prob = sigmoid(run(np.ascontiguousarray(view)))
            if axes:
                prob = np.flip(prob, axes)
            if side != size:
                prob = resize_bilinear(prob, size)
            total += prob
            squares += prob * prob
    views = np.float32(config.views)
    mean = total[:, 0] / views
    variance = np.maximum(squares[:, 0] / views - mean * mean, 0.0)
    return mean, np.sqrt(variance).astype(np.float32)
