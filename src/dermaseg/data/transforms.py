"""Joint image/mask augmentation and normalisation with torchvision.transforms.v2.

The image travels as a `tv_tensors.Image` (uint8 until the last step, which is cheaper than
augmenting floats) and the mask as a `tv_tensors.Mask`, so every geometric transform moves both
together and resamples the mask with nearest neighbour; photometric transforms leave the mask
alone. Output: image float32 3xHxW normalised with mean/std, mask float32 1xHxW in {0, 1};
or, with `as_uint8`, both uint8 (4x fewer bytes between loader processes), normalised later on
the training device by `normalise_images`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, DataConfig
from dermaseg.data.upload import constant, upload


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


class BrightnessContrast(v2.Transform):
    """Brightness then contrast, with torchvision's factor definitions, as one 256-entry lookup.

    Brightness multiplies the pixels by a factor drawn from [1 - brightness, 1 + brightness];
    contrast blends them with the image's mean grey level by a factor drawn from
    [1 - contrast, 1 + contrast]. For a uint8 image both are one map of the 256 levels, so the
    image is read once through a lookup table (2.1 ms at 512 px against 3.8 ms for
    `v2.ColorJitter`'s two uint8 round trips); float images go through torchvision's kernels.
    Masks pass through unchanged.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0) -> None:
        super().__init__()
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def factor(spread: float) -> float:
            return 1.0 + (float(torch.rand(())) * 2 - 1) * spread if spread > 0 else 1.0

        return {"brightness": factor(self.brightness), "contrast": factor(self.contrast)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        brightness, contrast = params["brightness"], params["contrast"]
        if inpt.dtype != torch.uint8:
            return F.adjust_contrast(F.adjust_brightness(inpt, brightness), contrast)
        levels = (torch.arange(256, dtype=torch.float32) * brightness).clamp_(0, 255)
        if contrast != 1.0:
            pixels = inpt.as_subclass(torch.Tensor)
            counts = torch.stack([torch.bincount(channel.flatten(), minlength=256)
                                  for channel in pixels.reshape(-1, *pixels.shape[-2:])])
            counts = counts.reshape(-1, 3, 256).sum(0).float()
            red, green, blue = (counts * levels).sum(1) / counts[0].sum()
            grey = 0.2989 * red + 0.587 * green + 0.114 * blue
            levels = ((levels - grey) * contrast + grey).clamp_(0, 255)
        table = levels.round_().to(torch.uint8).numpy()
        mapped = np.take(table, inpt.as_subclass(torch.Tensor).numpy())
        return tv_tensors.wrap(torch.from_numpy(mapped), like=inpt)


@functools.lru_cache(maxsize=16)
def bicubic_weights(steps: int, size: int) -> torch.Tensor:
    """size x steps matrix M: M @ v is `interpolate(v, size, "bicubic", align_corners=True)`.

    Bicubic interpolation is separable, so a field interpolated from a control grid is
    Wy @ grid @ Wx^T: two small matrix products, 10x cheaper than `interpolate` at 512 px.
    """
    basis = torch.eye(steps).view(1, steps, steps, 1)
    columns = torch.nn.functional.interpolate(basis, size=(size, 1), mode="bicubic",
                                              align_corners=True)
    return columns[0, :, :, 0].T.contiguous()


def control_grid_shape(height: int, width: int, spacing: float) -> tuple[int, int]:
    """Rows and columns of elastic control points, one every `spacing` pixels (at least 2)."""
    return max(2, round(height / spacing) + 1), max(2, round(width / spacing) + 1)


def displacement_field(shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Control-point shifts N x 2 (x, y) x gh x gw in pixels -> the bicubically interpolated
    field N x H x W x 2 in grid units ([-1, 1] spans the image), as `grid_sample` and
    torchvision's `elastic` take it."""
    rows = upload(bicubic_weights(shifts.shape[-2], height), shifts.device)
    cols = upload(bicubic_weights(shifts.shape[-1], width), shifts.device)
    field = torch.einsum("hk,nckl,wl->nhwc", rows, shifts, cols)
    return field * constant((2.0 / width, 2.0 / height), shifts.device)


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
        grid_h, grid_w = control_grid_shape(height, width, self.spacing)
        shifts = (torch.rand(2, grid_h, grid_w) * 2 - 1) * self.alpha
        return {"displacement": displacement_field(shifts.unsqueeze(0), height, width)}

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
        steps.append(BrightnessContrast(config.brightness, config.contrast))
    if config.elastic_p > 0 and config.elastic_alpha > 0:
        elastic = ElasticDeform(alpha=config.elastic_alpha, spacing=config.elastic_sigma)
        steps.append(v2.RandomApply([elastic], p=config.elastic_p))
    return steps


def normalise_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                     ) -> torch.Tensor:
    """uint8 (N x) 3 x H x W -> float32 (x / 255 - mean) / std, on the images' device and in
    their memory format."""
    mean_t = constant(mean, images.device, (3, 1, 1))
    std_t = constant(std, images.device, (3, 1, 1))
    return (images.float() - mean_t * 255.0) * (1.0 / (255.0 * std_t))


class SegmentationTransform:
    """(uint8 HxWx3 image, HxW 0/1 mask) numpy arrays -> (float 3xHxW, float 1xHxW) tensors.

    Args:
        mean, std: per-channel normalisation of the [0, 1] image.
        augment: random augmentation settings; None for evaluation (normalise only).
        as_uint8: return the augmented image and the 0/1 mask as uint8, not normalised (the
            training loop then calls `normalise_images` on the device).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: AugmentConfig | None = None,
        as_uint8: bool = False,
    ) -> None:
        steps = augmentations(augment) if augment is not None else []
        self.augment = v2.Compose(steps) if steps else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.as_uint8 = as_uint8

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0))
        if self.augment is not None:
            image_t, mask_t = self.augment(image_t, mask_t)
        image_out = image_t.as_subclass(torch.Tensor)
        mask_out = mask_t.as_subclass(torch.Tensor) > 0
        if self.as_uint8:
            return image_out.contiguous(), mask_out.to(torch.uint8)
        return normalise_images(image_out, self.mean, self.std), mask_out.float()


def build_transform(data: DataConfig, *, train: bool, as_uint8: bool = False
                    ) -> SegmentationTransform:
    """The training (augmenting) or evaluation transform described by a DataConfig."""
    return SegmentationTransform(data.mean or IMAGENET_MEAN, data.std or IMAGENET_STD,
                                 data.augment if train else None, as_uint8=as_uint8)
