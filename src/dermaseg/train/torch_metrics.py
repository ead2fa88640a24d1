"""The ISIC metrics of `dermaseg.evaluation.metrics` (same definitions and conventions) on
torch tensors, for training and validation: per batch (`batch_metrics`) and accumulated over
batches and DDP processes (`SegmentationMetrics`). Kept apart so that scoring mask files
never imports torch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from dermaseg.errors import DermasegError
from dermaseg.evaluation.metrics import JACCARD_THRESHOLD, METRIC_NAMES


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den == 0, torch.ones_like(num), num / den.clamp(min=1))


def batch_metrics(
    pred: Tensor, truth: Tensor, jaccard_threshold: float = JACCARD_THRESHOLD
) -> dict[str, Tensor]:
    """Per-image metrics of boolean masks, each a float64 tensor of shape (N,).

    Args:
        pred, truth: boolean tensors (N, 1, H, W) or (N, H, W).
    """
    dims = tuple(range(1, pred.dim()))
    tp = (pred & truth).sum(dims).double()
    fp = (pred & ~truth).sum(dims).double()
    fn = (~pred & truth).sum(dims).double()
    tn = (~pred & ~truth).sum(dims).double()
    jaccard = _safe_ratio(tp, tp + fp + fn)
    return {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "sensitivity": _safe_ratio(tp, tp + fn),
        "specificity": _safe_ratio(tn, tn + fp),
        "precision": _safe_ratio(tp, tp + fp),
        "dice": _safe_ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": jaccard,
        "threshold_jaccard": torch.where(
            jaccard >= jaccard_threshold, jaccard, torch.zeros_like(jaccard)
        ),
    }


class SegmentationMetrics(Metric):
    """Per-image ISIC metrics from logits, macro-averaged over every image seen.

    `update(logits, target)`: logits (N, 1, H, W) (or (N, H, W)); a pixel is predicted lesion
    when sigmoid(logit) > `threshold`; target of the same shape, lesion where > 0.5.
    `compute()` returns a dict of float64 scalars: the mean over images of accuracy,
    sensitivity, specificity, precision, dice, jaccard (IoU) and threshold_jaccard, with the
    official scorer's conventions (module docstring), plus `pooled_dice` and `pooled_jaccard`
    from the summed counts (micro average). The sums are reduced with "sum" across DDP
    processes, so the result equals a single-process run over the same images.

    Args:
        threshold: probability threshold for the prediction.
        jaccard_threshold: per-image Jaccard below this counts as 0 in threshold_jaccard.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    images: Tensor  # states made by add_state (and the sum_<metric> ones)
    counts: Tensor

    def __init__(
        self, threshold: float = 0.5, jaccard_threshold: float = JACCARD_THRESHOLD, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < threshold < 1:
            raise DermasegError(f"threshold: must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.jaccard_threshold = jaccard_threshold
        zero = torch.tensor(0.0, dtype=torch.float64)
        for name in METRIC_NAMES:
            self.add_state(f"sum_{name}", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("images", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        if target.dim() == logits.dim() - 1:
            target = target.unsqueeze(1)
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} != target {tuple(target.shape)}")
        pred = torch.sigmoid(logits.detach().float()) > self.threshold
        truth = target.detach() > 0.5
        values = batch_metrics(pred, truth, self.jaccard_threshold)
        for name in METRIC_NAMES:
            setattr(self, f"sum_{name}", getattr(self, f"sum_{name}") + values[name].sum())
        self.images += pred.shape[0]
        self.counts += torch.stack(
            [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
        ).double()

    def compute(self) -> dict[str, Tensor]:
        n = self.images.clamp(min=1)
        out = {name: getattr(self, f"sum_{name}") / n for name in METRIC_NAMES}
        tp, fp, fn = self.counts
        out["pooled_dice"] = _safe_ratio(2 * tp, 2 * tp + fp + fn)
        out["pooled_jaccard"] = _safe_ratio(tp, tp + fp + fn)
        return out
