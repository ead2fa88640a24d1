"""The training augmentation of `transforms.augmentations`, applied to whole batches on the
training device.

On a GPU the loader workers would otherwise augment every 512-px image on the CPU (about 5 ms
each here, 3x that on a GPU machine's cores), and a bf16 ResNet-50 step consumes 8 images in
25 ms on an H100/H200: the loader was measured as the bottleneck. With `data.augment_on`
"device" (the default on a GPU) the workers only gather uint8 arrays, and this module draws
each sample's parameters on the CPU and applies them on the device in a handful of batched
kernels, without a host-device synchronisation (the parameters travel through pinned memory,
`dermaseg.data.upload`).

Same settings (`AugmentConfig`), same order (flips, rotation by 90 degrees, brightness then
contrast, elastic deformation) and same parameter distributions as the loader path. Each
sample's parameters come from a generator seeded by (seed, epoch, index), so a run is
reproducible and an interrupted epoch resumes with the same augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dermaseg.config import AugmentConfig
from dermaseg.data.transforms import control_grid_shape, displacement_field
from dermaseg.data.upload import constant, upload
from dermaseg.errors import DermasegError

PLACES = ("auto", "loader", "device")
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def augment_on_device(place: str, on_gpu: bool) -> bool:
    """Whether `data.augment_on` puts the training augmentation on the device.

    Raises:
        DermasegError: `place` is not auto, loader or device.
    """
    if place not in PLACES:
        raise DermasegError(f"data.augment_on: must be one of {', '.join(PLACES)}, got {place!r}")
    return place == "device" or (place == "auto" and on_gpu)


def _uniform(generator: torch.Generator, spread: float) -> float:
    """A factor drawn from [1 - spread, 1 + spread]."""
    return 1.0 + (float(torch.rand((), generator=generator)) * 2 - 1) * spread


class DeviceAugment:
    """Draws per-sample parameters (`draw`, on the CPU) and applies them to a batch (`apply`,
    on the batch's device). Images N x 3 x H x W uint8 or float in [0, 255]; masks N x 1 x H x W.
    """

    def __init__(self, config: AugmentConfig, height: int, width: int) -> None:
        self.config = config
        self.height, self.width = height, width
        self.grid = control_grid_shape(height, width, config.elastic_sigma)

    def draw(self, seeds: list[int]) -> dict[str, torch.Tensor]:
        """Parameters for one sample per seed: flips, quarter turns, brightness and contrast
        factors, whether to deform and the control-point shifts (pixels)."""
        rows = [self._draw_one(torch.Generator().manual_seed(seed)) for seed in seeds]
        hflip, vflip, turns, brightness, contrast, elastic, shifts = zip(*rows, strict=True)
        return {"hflip": torch.tensor(hflip), "vflip": torch.tensor(vflip),
                "turns": torch.tensor(turns), "brightness": torch.tensor(brightness),
                "contrast": torch.tensor(contrast), "elastic": torch.tensor(elastic),
                "shifts": torch.stack(shifts)}

    def _draw_one(self, generator: torch.Generator) -> tuple:
        config = self.config

        def chance(p: float) -> bool:
            return p > 0 and float(torch.rand((), generator=generator)) < p

        hflip, vflip = chance(config.hflip), chance(config.vflip)
        turns = int(torch.randint(1, 4, (), generator=generator)) if chance(config.rotate90) else 0
        brightness = _uniform(generator, config.brightness)
        contrast = _uniform(generator, config.contrast)
        elastic = chance(config.elastic_p) and config.elastic_alpha > 0
        shifts = (torch.rand(2, *self.grid, generator=generator) * 2 - 1) \
            * (config.elastic_alpha if elastic else 0.0)
        return hflip, vflip, turns, brightness, contrast, elastic, shifts

    def apply(self, images: torch.Tensor, masks: torch.Tensor, params: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (float32 images in [0, 255], uint8 masks in {0, 1})."""
        params = {name: upload(value, images.device) for name, value in params.items()}
        images, masks = images.float(), masks.to(torch.uint8)
        for name, dim in (("hflip", -1), ("vflip", -2)):
            images = _where(params[name], images.flip(dim), images)
            masks = _where(params[name], masks.flip(dim), masks)
        if self.config.rotate90 > 0:
            images, masks = _rotate(images, params["turns"]), _rotate(masks, params["turns"])
        images = brightness_contrast(images, params["brightness"], params["contrast"])
        if self.config.elastic_p > 0 and self.config.elastic_alpha > 0:
            images, masks = self._elastic(images, masks, params)
        return images, masks

    def _elastic(self, images: torch.Tensor, masks: torch.Tensor,
                 params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample is resampled (no data-dependent branch, so no synchronisation); the
        ones not drawn for deformation keep their exact pixels."""
        height, width = images.shape[-2:]
        field = displacement_field(params["shifts"].to(images.device, torch.float32),
                                   height, width)
        grid = identity_grid(height, width, images.device) + field
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        warped_masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False).to(torch.uint8)
        chosen = params["elastic"]
        return _where(chosen, warped, images), _where(chosen, warped_masks, masks)


def _where(flags: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per sample: `chosen[i]` where `flags[i]`, else `other[i]`."""
    return torch.where(flags.to(chosen.device).view(-1, 1, 1, 1), chosen, other)


def _rotate(batch: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Each square sample rotated by its own number of quarter turns."""
    out = batch
    for k in (1, 2, 3):
        out = _where(turns == k, torch.rot90(batch, k, dims=(-2, -1)), out)
    return out


def brightness_contrast(images: torch.Tensor, brightness: torch.Tensor,
                        contrast: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness then adjust_contrast on [0, 255] floats, one factor
    pair per sample: scale and clip, then blend with the image's mean grey level and clip."""
    brightness = brightness.to(images.device, images.dtype).view(-1, 1, 1, 1)
    contrast = contrast.to(images.device, images.dtype).view(-1, 1, 1, 1)
    images = (images * brightness).clamp_(0, 255)
    weights = constant(GREY_WEIGHTS, images.device, dtype=images.dtype)
    grey = torch.einsum("nchw,c->n", images, weights) / (images.shape[-2] * images.shape[-1])
    grey = grey.view(-1, 1, 1, 1)
    return ((images - grey) * contrast + grey).clamp_(0, 255)


def identity_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """1 x H x W x 2 sampling grid of pixel centres (`grid_sample`, align_corners=False)."""
    xs = torch.linspace((1 - width) / width, (width - 1) / width, width, device=device)
    ys = torch.linspace((1 - height) / height, (height - 1) / height, height, device=device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)
