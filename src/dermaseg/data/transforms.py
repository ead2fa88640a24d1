"""Joint image/mask augmentation and normalisation with torchvision.transforms.v2.

The image travels as a `tv_tensors.Image` (uint8 until the last step, which is cheaper than
augmenting floats) and the mask as a `tv_tensors.Mask`, so every geometric transform moves both
together and resamples the mask with nearest neighbour; photometric transforms leave the mask
alone. Output: image float32 3xHxW normalised with mean/std, mask float32 1xHxW in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, DataConfig


class RandomRotate90(v2.Transform):
    """Rotate by a random multiple of 90 degrees with probability `p` (exact, no resampling).

    Meant for square inputs (prepared data is square); on a non-square input the height and
    width swap for odd multiples.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        turns = int(torch.randint(1, 4, ()).item()) if torch.rand(()) < self.p else 0
        return {"turns": turns}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["turns"] == 0 or not isinstance(inpt, torch.Tensor):
            return inpt
        rotated = torch.rot90(inpt.as_subclass(torch.Tensor), params["turns"], dims=(-2, -1))
        if isinstance(inpt, tv_tensors.TVTensor):
            return tv_tensors.wrap(rotated, like=inpt)
        return rotated


class ElasticDeform(v2.Transform):
    """Smooth random elastic deformation from a coarse grid of random control-point shifts.

    Each control point (one every `spacing` pixels) moves by up to `alpha` pixels in x and y;
    the shifts are interpolated bicubically to every pixel. This is the control-grid form of
    elastic deformation (as in the `elasticdeform` package): over 10x cheaper on CPU than
    torchvision's `ElasticTransform` (8 ms against 97 ms at 256 px, bench/bench_data.py), which
    Gaussian-blurs a full-resolution noise field and, at alpha 30 / sigma 6, moves pixels by
    0.3 px on average. Resampling uses
    torchvision's `elastic` kernel: bilinear for images, nearest neighbour for `Mask`, so masks
    stay binary; uncovered borders are filled with 0.
    """

    def __init__(self, alpha: float = 8.0, spacing: float = 32.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.spacing = float(spacing)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        grid_h = max(2, round(height / self.spacing) + 1)
        grid_w = max(2, round(width / self.spacing) + 1)
        shifts = (torch.rand(1, 2, grid_h, grid_w) * 2 - 1) * self.alpha
        field = torch.nn.functional.interpolate(
            shifts, size=(height, width), mode="bicubic", align_corners=True
        )
        # torchvision wants the displacement in grid units ([-1, 1] spans the image): 1xHxWx2.
        field[:, 0] *= 2.0 / width
        field[:, 1] *= 2.0 / height
        return {"displacement": field.permute(0, 2, 3, 1)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.elastic, inpt, params["displacement"], fill=0)


def augmentations(config: AugmentConfig) -> list[v2.Transform]:
    """The random transforms `config` switches on (a probability or strength of 0 turns one off)."""
    steps: list[v2.Transform] = []
    if config.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=config.hflip))
    if config.vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=config.vflip))
    if config.rotate90 > 0:
        steps.append(RandomRotate90(p=config.rotate90))
    if config.brightness > 0 or config.contrast > 0:
        steps.append(v2.ColorJitter(brightness=config.brightness or None,
                                    contrast=config.contrast or None))
    if config.elastic_p > 0 and config.elastic_alpha > 0:
        elastic = ElasticDeform(alpha=config.elastic_alpha, spacing=config.elastic_sigma)
        steps.append(v2.RandomApply([elastic], p=config.elastic_p))
    return steps


class SegmentationTransform:
    """(uint8 HxWx3 image, HxW 0/1 mask) numpy arrays -> (float 3xHxW, float 1xHxW) tensors.

    Args:
        mean, std: per-channel normalisation of the [0, 1] image.
        augment: random augmentation settings; None for evaluation (normalise only).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: AugmentConfig | None = None,
    ) -> None:
        steps = augmentations(augment) if augment is not None else []
        self.augment = v2.Compose(steps) if steps else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(3, 1, 1))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0))
        if self.augment is not None:
            image_t, mask_t = self.augment(image_t, mask_t)
        return self.normalise(image_t), (mask_t.as_subclass(torch.Tensor) > 0).float()

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 3xHxW -> float32 (x / 255 - mean) / std, in one pass."""
        pixels = image.as_subclass(torch.Tensor).float()
        return (pixels - self.mean * 255.0) * self.scale


def build_transform(data: DataConfig, *, train: bool) -> SegmentationTransform:
    """The training (augmenting) or evaluation transform described by a DataConfig."""
    return SegmentationTransform(data.mean, data.std, data.augment if train else None)
