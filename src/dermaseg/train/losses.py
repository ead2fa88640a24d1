"""Segmentation losses for one foreground class (lesion), all computed from logits.

Every function takes raw logits of shape (N, 1, H, W) and a target of the same shape (or
(N, H, W)) with values in {0, 1}; it returns a scalar tensor. The arithmetic is done in float32
with autocast switched off, so the losses stay finite under fp16/bf16 mixed precision, and an
empty mask (no lesion) or an all-lesion mask gives a finite, sensible value.

`SegmentationLoss` combines the terms with the weights of `dermaseg.config.LossConfig`:

    total = dice * soft_dice + bce * BCE + focal * focal_loss + boundary * boundary_loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dermaseg.config import LossConfig
from dermaseg.errors import DermasegError
from dermaseg.upload import constant

__all__ = [
    "SegmentationLoss",
    "bce_loss",
    "boundary_loss",
    "boundary_target",
    "focal_loss",
    "smooth_targets",
    "soft_dice_loss",
]


def _prepare(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """float32 logits and target, both (N, 1, H, W).

    Raises:
        ValueError: when the shapes do not match.
    """
    if target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    return logits.float(), target.float()


def _no_autocast(logits: Tensor) -> torch.autocast:
    return torch.autocast(device_type=logits.device.type, enabled=False)


def smooth_targets(target: Tensor, alpha: float) -> Tensor:
    """Label smoothing for a binary target: t * (1 - alpha) + alpha / 2."""
    if alpha == 0:
        return target
    return target * (1.0 - alpha) + alpha / 2.0


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice, computed per image and then averaged over the batch.

    Per image: dice = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(x).
    An empty target predicted empty gives dice = smooth / smooth = 1 (loss 0); `smooth` > 0
    keeps the ratio defined and its gradient bounded.

    Args:
        logits: (N, 1, H, W) raw scores.
        target: (N, 1, H, W) or (N, H, W), values in [0, 1].
        smooth: additive smoothing of numerator and denominator.
    """
    with _no_autocast(logits):
        x, t = _prepare(logits, target)
        p = torch.sigmoid(x)
        dims = tuple(range(1, x.dim()))
        inter = (p * t).sum(dims)
        denom = p.sum(dims) + t.sum(dims)
        dice = (2.0 * inter + smooth) / (denom + smooth)
        return 1.0 - dice.mean()


def bce_loss(
    logits: Tensor, target: Tensor, pos_weight: float | None = None, label_smoothing: float = 0.0
) -> Tensor:
    """Binary cross-entropy with logits, averaged over all pixels.

    Args:
        logits: (N, 1, H, W) raw scores.
        target: (N, 1, H, W) or (N, H, W), values in [0, 1].
        pos_weight: weight of the lesion (positive) term; > 1 counters a small lesion.
        label_smoothing: alpha, targets become t * (1 - alpha) + alpha / 2.
    """
    with _no_autocast(logits):
        x, t = _prepare(logits, target)
        t = smooth_targets(t, label_smoothing)
        weight = None if pos_weight is None else constant((pos_weight,), x.device)
        return F.binary_cross_entropy_with_logits(x, t, pos_weight=weight)


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, label_smoothing: float = 0.0
) -> Tensor:
    """Focal loss (Lin et al. 2017), averaged over all pixels: (1 - p_t)^gamma * BCE.

    p_t = p * t + (1 - p) * (1 - t) is the probability given to the target; gamma = 0 is BCE.

    Args:
        logits: (N, 1, H, W) raw scores.
        target: (N, 1, H, W) or (N, H, W), values in [0, 1].
        gamma: focusing parameter (>= 0).
        label_smoothing: alpha, as in `bce_loss`.
    """
    with _no_autocast(logits):
        x, t = _prepare(logits, target)
        t = smooth_targets(t, label_smoothing)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p = torch.sigmoid(x)
        p_t = p * t + (1.0 - p) * (1.0 - t)
        return ((1.0 - p_t).clamp(min=0.0).pow(gamma) * bce).mean()


def _dilate(mask: Tensor, radius: int) -> Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def boundary_target(mask: Tensor, width: int = 3) -> Tensor:
    """A band `width` pixels thick along the mask contour, as a float (N, 1, H, W) 0/1 tensor.

    Morphological gradient with square structuring elements (max-pool, so it runs on the
    mask's device): dilation by width // 2 (the outer part of the band) minus erosion by
    width - width // 2 (the inner part). The image border is not a contour: a lesion filling
    the whole image has an empty band, and so has an empty mask.

    Args:
        mask: (N, 1, H, W) or (N, H, W) tensor, lesion > 0.5.
        width: band thickness in pixels (>= 1).

    Raises:
        ValueError: when width < 1.
    """
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    m = (mask.float() > 0.5).float()
    outer = _dilate(m, width // 2)
    # max_pool pads with -inf, so pixels outside the image do not erode the lesion
    inner = 1.0 - _dilate(1.0 - m, width - width // 2)
    return outer - inner


def boundary_loss(edge_logits: Tensor, mask: Tensor, width: int = 3) -> Tensor:
    """BCE between the edge head's logits and `boundary_target(mask, width)`.

    Args:
        edge_logits: (N, 1, H, W) raw scores of the edge head.
        mask: (N, 1, H, W) or (N, H, W) lesion mask (the segmentation target).
        width: band thickness in pixels.
    """
    with _no_autocast(edge_logits):
        band = boundary_target(mask.detach(), width)
        x, t = _prepare(edge_logits, band)
        return F.binary_cross_entropy_with_logits(x, t)


class SegmentationLoss(nn.Module):
    """The weighted sum of the loss terms chosen in `LossConfig`.

    Terms with weight 0 are skipped. Label smoothing applies to the pixel-wise terms (BCE and
    focal); soft Dice is an overlap ratio and uses the hard target.

    Args:
        config: weights and parameters (dice, bce, focal, focal_gamma, pos_weight,
            label_smoothing, boundary, boundary_width).

    Raises:
        DermasegError: when every weight is zero or a weight/parameter is out of range.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LossConfig()
        weights = {
            "dice": config.dice,
            "bce": config.bce,
            "focal": config.focal,
            "boundary": config.boundary,
        }
        for name, value in weights.items():
            if value < 0:
                raise DermasegError(f"loss.{name}: weight must be >= 0, got {value}")
        if not any(weights.values()):
            raise DermasegError("loss: every weight is 0; set loss.dice, loss.bce or loss.focal")
        if not 0 <= config.label_smoothing < 1:
            raise DermasegError(
                f"loss.label_smoothing: must be in [0, 1), got {config.label_smoothing}"
            )
        if config.pos_weight is not None and config.pos_weight <= 0:
            raise DermasegError(f"loss.pos_weight: must be > 0, got {config.pos_weight}")
        if config.focal_gamma < 0:
            raise DermasegError(f"loss.focal_gamma: must be >= 0, got {config.focal_gamma}")
        if config.boundary_width < 1:
            raise DermasegError(f"loss.boundary_width: must be >= 1, got {config.boundary_width}")
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}

    def forward(self, outputs: Tensor | dict[str, Tensor], target: Tensor):
        """Total loss and its parts.

        Args:
            outputs: mask logits (N, 1, H, W), or a dict {"mask": logits, "edge": edge_logits}
                from a model with an edge head ("edge" is needed when loss.boundary > 0).
            target: (N, 1, H, W) or (N, H, W) lesion mask, values in {0, 1}.

        Returns:
            (total, parts): `total` is the weighted sum, a float32 scalar with gradient;
            `parts` maps each active term ("dice", "bce", "focal", "boundary") to its
            unweighted value, detached, for logging.

        Raises:
            DermasegError: when loss.boundary > 0 and the outputs carry no "edge" logits.
        """
        logits = outputs["mask"] if isinstance(outputs, dict) else outputs
        edge = outputs.get("edge") if isinstance(outputs, dict) else None
        if "boundary" in self.weights and edge is None:
            raise DermasegError(
                "loss.boundary > 0 needs edge logits: set model.edge_head=true (or loss.boundary=0)"
            )
        parts = {name: self._term(name, logits, edge, target) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def _term(self, name: str, logits: Tensor, edge: Tensor | None, target: Tensor) -> Tensor:
        c = self.config
        if name == "dice":
            return soft_dice_loss(logits, target)
        if name == "bce":
            return bce_loss(logits, target, c.pos_weight, c.label_smoothing)
        if name == "focal":
            return focal_loss(logits, target, c.focal_gamma, c.label_smoothing)
        if edge is None:  # refused in forward already; kept as an error, not an assert
            raise DermasegError("loss.boundary needs edge logits (model.edge_head: true)")
        return boundary_loss(edge, target, c.boundary_width)
