"""Conversion of prepared arrays to tensors, and normalisation (no augmentation: that is
`dermaseg.data.augment`, on whole batches).

Output: image float32 3xHxW normalised with mean/std, mask float32 1xHxW in {0, 1}; or, with
`as_uint8`, both uint8 (4x fewer bytes between loader processes), augmented and normalised
later, on whole batches (`normalise_images`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from dermaseg.preprocessing import Normalisation


def normalise_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                     ) -> torch.Tensor:
    """uint8 (N x) 3 x H x W -> float32 (x / 255 - mean) / std, on the images' device and in
    their memory format: `dermaseg.preprocessing.Normalisation`, the Predictor's own."""
    return Normalisation.of(mean, std).tensor(images)


class SegmentationTransform:
    """(uint8 HxWx3 image, HxW 0/1 mask) numpy arrays -> (float 3xHxW, float 1xHxW) tensors.

    Args:
        mean, std: per-channel normalisation of the [0, 1] image.
        as_uint8: return the image 3xHxW and the 0/1 mask 1xHxW as uint8, not normalised
            (training batches are then augmented and normalised as a whole).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        as_uint8: bool = False,
    ) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.as_uint8 = as_uint8

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0) > 0
        if self.as_uint8:
            return image_t.contiguous(), mask_t.to(torch.uint8)
        return normalise_images(image_t, self.mean, self.std), mask_t.float()


def build_transform(data: DataConfig, *, as_uint8: bool = False) -> SegmentationTransform:
    """The (non-augmenting) transform described by a DataConfig: its mean and std."""
    return SegmentationTransform(data.mean or IMAGENET_MEAN, data.std or IMAGENET_STD,
                                 as_uint8=as_uint8)
