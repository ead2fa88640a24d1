"""The training augmentation: one batched implementation, run wherever the batch is.

Each sample's parameters are drawn on the CPU from a generator seeded by its key (`draw`; the
seeds come from (seed, epoch, index), `dermaseg.train.datamodule.sample_seed`), then applied
to a whole batch in a handful of tensor operations (`apply`). The batch may be

* in a loader worker, on the CPU (`data.augment_on: loader`, the default without a GPU): the
  workers gather uint8 arrays and augment each batch they collate
  (`dermaseg.train.datamodule.BatchCollate`);
* on the training device (`device`, the default on a GPU): the workers only gather, the
  training module's batch hooks draw the parameters and augment after the transfer
  (`dermaseg.train.device_batches`). A bf16 ResNet-50 step consumes 8 images at 512 px in
  25 ms on an H100/H200, faster than a GPU machine's cores augment them.

Same draws, same operations: a run is reproducible, an interrupted epoch resumes with the same
augmentation, and both placements give the same batch on the same device. Order: flips,
rotation by quarter turns, gamma, brightness then contrast, saturation and hue, zoom and
elastic deformation (one resampling), then hair, vignette, blur and noise
(`dermaseg.data.augment_photometric`, for other clinics' dermoscopes: off by default, drawn
after the others). Geometric steps move image and mask together, masks resampled with nearest
neighbour (they stay binary); photometric steps leave the masks alone.

On a GPU each step runs on every sample and `torch.where` keeps the drawn ones: no shape
depends on the data, so the CPU never waits for the GPU (the parameters travel through pinned
memory, `dermaseg.upload`). On the CPU only the drawn samples are computed (an elastic
deformation is most of the cost), a few samples at a time (their float copies then stay in
the cache); every path gives the same bits, since a sample's result depends on its draw alone
(tests/test_augment.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dermaseg.config import AugmentConfig
from dermaseg.data.augment_photometric import (
    PhotometricDraw,
    apply_gamma,
    late_steps,
    recolour,
)
from dermaseg.errors import DermasegError
from dermaseg.upload import constant, upload

PLACES = ("auto", "loader", "device")
CPU_CHUNK_BYTES = 2 << 20  # on the CPU, augment as many samples at a time as fit in 2 MiB
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale

# (images, masks, per-sample extra: a tensor, a tuple of them or None) -> (images, masks),
# for whole batches
Step = Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]]


def augment_on_device(place: str, on_gpu: bool) -> bool:
    """Whether `data.augment_on` puts the training augmentation on the device.

    Raises:
        DermasegError: `place` is not auto, loader or device.
    """
    if place not in PLACES:
        raise DermasegError(f"data.augment_on: must be one of {', '.join(PLACES)}, got {place!r}")
    return place == "device" or (place == "auto" and on_gpu)


class BatchAugment:
    """Draws per-sample parameters (`draw`, on the CPU) and applies them to a batch (`apply`,
    on the batch's device); `augment(images, masks, seeds)` does both.

    Args:
        config: the steps, their probabilities and strengths (a probability or strength of 0
            turns a step off).
        height, width: the images' size (the elastic control grid depends on it).
    """

    def __init__(self, config: AugmentConfig, height: int, width: int) -> None:
        self.config = config
        self.height, self.width = height, width
        self.grid = control_grid_shape(height, width, config.elastic_sigma)
        self.photometric = PhotometricDraw(config, height, width)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, seeds: Sequence[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply(images, masks, draw(seeds))`: one seed per sample."""
        return self.apply(images, masks, self.draw(seeds))

    def draw(self, seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        """Parameters of one sample per seed, CPU tensors with N = len(seeds) rows: hflip,
        vflip (N,) bool; turns (N,) int64 quarter turns; brightness, contrast (N,) float32
        factors; elastic (N,) bool; shifts N x 2 x gh x gw control-point shifts in pixels.
        Then, drawn after those (which stay as they were) and only for the steps switched on:
        zoom N x 3 (1 / scale, centre x, y in grid units) and `PhotometricDraw.draw_one`'s."""
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        rows = [self._draw_one(generator) for generator in generators]
        hflip, vflip, turns, brightness, contrast, elastic, shifts = zip(*rows, strict=True)
        params = {"hflip": torch.tensor(hflip), "vflip": torch.tensor(vflip),
                  "turns": torch.tensor(turns), "brightness": torch.tensor(brightness),
                  "contrast": torch.tensor(contrast), "elastic": torch.tensor(elastic),
                  "shifts": torch.stack(shifts)}
        more = [self._draw_more(generator) for generator in generators]
        return params | {name: torch.stack([row[name] for row in more]) for name in more[0]}

    def _draw_one(self, generator: torch.Generator) -> tuple:
        config = self.config

        def chance(p: float) -> bool:
            return p > 0 and float(torch.rand((), generator=generator)) < p

        def factor(spread: float) -> float:  # drawn from [1 - spread, 1 + spread]
            return 1.0 + (float(torch.rand((), generator=generator)) * 2 - 1) * spread

        hflip, vflip = chance(config.hflip), chance(config.vflip)
        turns = int(torch.randint(1, 4, (), generator=generator)) if chance(config.rotate90) else 0
        brightness, contrast = factor(config.brightness), factor(config.contrast)
        elastic = chance(config.elastic_p) and config.elastic_alpha > 0
        shifts = (torch.rand(2, *self.grid, generator=generator) * 2 - 1) \
            * (config.elastic_alpha if elastic else 0.0)
        return hflip, vflip, turns, brightness, contrast, elastic, shifts

    def _draw_more(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The zoom (when `scale` is on), then the photometric steps' parameters."""
        row: dict[str, torch.Tensor] = {}
        if self.config.scale > 0:
            scale, x, y = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
            row["zoom"] = torch.tensor([1 / (1 + (2 * scale - 1) * self.config.scale),
                                        2 * x - 1, 2 * y - 1], dtype=torch.float32)
        return row | self.photometric.draw_one(generator)

    def apply(self, images: torch.Tensor, masks: torch.Tensor, params: dict[str, torch.Tensor],
              *, branchless: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch with `draw`'s parameters.

        Args:
            images: N x 3 x H x W uint8.
            masks: N x 1 x H x W, values in {0, 1}.
            params: `draw`'s parameters for the N samples (CPU or on the images' device).
            branchless: run each step on every sample and keep the drawn ones (no
                synchronisation: for a GPU); False: only on the drawn samples. Default: False
                on the CPU, True elsewhere. The result is the same.

        Returns:
            images N x 3 x H x W uint8 (rounded), masks N x 1 x H x W uint8 in {0, 1}.
        """
        if branchless is None:
            branchless = images.device.type != "cpu"
        params = {name: upload(value, images.device) for name, value in params.items()}
        size = max(1, CPU_CHUNK_BYTES // (4 * images[0].numel()))
        if branchless or len(images) <= size:
            return self._apply(images, masks, params, branchless)
        # A sample's result does not depend on its batch: on the CPU, a few samples at a time
        # keep the float copies in cache (2x faster at 512 px)
        parts = [self._apply(images[start:start + size], masks[start:start + size],
                             {name: value[start:start + size] for name, value in params.items()},
                             branchless) for start in range(0, len(images), size)]
        return torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])

    def _apply(self, images: torch.Tensor, masks: torch.Tensor, params: dict[str, torch.Tensor],
               branchless: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply` on one batch, the parameters on its device."""
        config, masks = self.config, masks.to(torch.uint8)
        step = _where_step if branchless else _index_step
        if not branchless:  # `_index_step` writes into the batch: a copy of the caller's
            images, masks = images.clone(), masks.clone()
        for name, dim in (("hflip", -1), ("vflip", -2)):
            if getattr(config, name) > 0:
                images, masks = step(params[name], functools.partial(_flip, dim=dim),
                                     images, masks)
        if config.rotate90 > 0:
            for turns in (1, 2, 3):
                images, masks = step(params["turns"] == turns,
                                     functools.partial(_rotate, turns=turns), images, masks)
        if config.gamma > 0:
            images = apply_gamma(images, params["gamma_lut"])
        photometric = config.brightness > 0 or config.contrast > 0
        colour = config.hue > 0 or config.saturation > 0
        warp = config.scale > 0 or (config.elastic_p > 0 and config.elastic_alpha > 0)
        late = late_steps(config, params)
        if not (photometric or colour or warp or late):
            return images, masks
        if photometric:
            images = brightness_contrast(images, params["brightness"], params["contrast"])
        else:
            images = images.float()
        if colour:
            images = recolour(images, params["colour"])
        if warp:
            images, masks = self._warp(images, masks, params, step)
        for flags, function, extra in late:
            images, masks = step(flags, function, images, masks, extra)
        return images.round_().to(torch.uint8), masks

    def _warp(self, images: torch.Tensor, masks: torch.Tensor, params: dict[str, torch.Tensor],
              step: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """The elastic deformation, after the zoom when `scale` is on (one resampling)."""
        config = self.config
        elastic = config.elastic_p > 0 and config.elastic_alpha > 0
        if config.scale <= 0:
            return step(params["elastic"], _elastic, images, masks, params["shifts"])
        zoom = params["zoom"]
        flags = zoom[:, 0] != 1
        if elastic:
            return step(flags | params["elastic"], _zoom, images, masks, (zoom, params["shifts"]))
        return step(flags, _zoom, images, masks, (zoom,))


def _where_step(flags: torch.Tensor, step: Step, images: torch.Tensor, masks: torch.Tensor,
                extra: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample through `step`; sample i keeps the result where `flags[i]` (N,) is set."""
    new_images, new_masks = step(images, masks, extra)
    return _where(flags, new_images, images), _where(flags, new_masks, masks)


def _index_step(flags: torch.Tensor, step: Step, images: torch.Tensor, masks: torch.Tensor,
                extra: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the samples whose `flags[i]` (N,) is set go through `step` (their rows of
    `extra` with them), their results written into `images` and `masks` (in place: fresh
    buffers cost the CPU page faults); reads the flags on the host."""
    chosen = flags.nonzero().flatten()
    if len(chosen) == 0:
        return images, masks
    if len(chosen) == len(flags):
        return step(images, masks, extra)
    part = None if extra is None else _rows(extra, chosen)
    new_images, new_masks = step(images.index_select(0, chosen),
                                 masks.index_select(0, chosen), part)
    for row, index in enumerate(chosen.tolist()):
        images[index].copy_(new_images[row])
        masks[index].copy_(new_masks[row])
    return images, masks


def _rows(extra: Any, chosen: torch.Tensor) -> Any:
    """The `chosen` rows of a step's extra: a tensor or a tuple of them."""
    if isinstance(extra, tuple):
        return tuple(value.index_select(0, chosen) for value in extra)
    return extra.index_select(0, chosen)


def _where(flags: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per sample: `chosen[i]` where `flags[i]`, else `other[i]` (both N x C x H x W)."""
    return torch.where(flags.to(chosen.device).view(-1, 1, 1, 1), chosen, other)


def _flip(images: torch.Tensor, masks: torch.Tensor, extra: torch.Tensor | None, *, dim: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    return images.flip(dim), masks.flip(dim)


def _rotate(images: torch.Tensor, masks: torch.Tensor, extra: torch.Tensor | None, *, turns: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Square samples rotated by `turns` quarter turns (exact, no resampling), contiguous."""
    return (torch.rot90(images, turns, dims=(-2, -1)).contiguous(),
            torch.rot90(masks, turns, dims=(-2, -1)).contiguous())


def brightness_contrast(images: torch.Tensor, brightness: torch.Tensor,
                        contrast: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness then adjust_contrast, one factor pair per sample:
    scale and clip, then blend with the image's mean grey level and clip.

    Args:
        images: N x 3 x H x W uint8.
        brightness, contrast: (N,) factors.

    Returns:
        N x 3 x H x W float32 in [0, 255].
    """
    brightness = brightness.to(images.device, torch.float32).view(-1, 1, 1, 1)
    contrast = contrast.to(images.device, torch.float32).view(-1, 1, 1, 1)
    grey = mean_grey(images, brightness).view(-1, 1, 1, 1)
    # float, then multiply (uint8 * float in one step is 15x slower on the CPU); in place
    scaled = images.float().mul_(brightness).clamp_(0, 255)
    # torchvision's blend: contrast * image + (1 - contrast) * grey
    return scaled.mul_(contrast).add_(grey * (1 - contrast)).clamp_(0, 255)


def mean_grey(images: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """(N,) float32: the mean grey level (torchvision's weights) of each uint8 image
    N x 3 x H x W once multiplied by its `brightness` (N x 1 x 1 x 1) and clipped at 255.

    A pixel clips above limit = floor(255 / brightness); the sums of min(pixel, limit) and
    min(pixel, limit + 1) give the sum of the pixels that do not clip and the count of those
    that do. Integer sums are exact in any order, where a sum of the scaled values would round
    differently for another memory layout, thread count or batch."""
    limit = (255.0 / brightness).floor_().clamp_(max=255)
    scratch = torch.minimum(images, limit.to(torch.uint8))
    below = _exact_sum(scratch)
    above = (limit + 1).clamp_(max=255).to(torch.uint8)  # 255: nothing clips, count 0
    count = _exact_sum(torch.minimum(images, above, out=scratch)) - below  # N x 3
    kept = below - limit.view(-1, 1).double() * count
    sums = brightness.view(-1, 1).double() * kept + 255.0 * count
    weights = constant(GREY_WEIGHTS, images.device, dtype=torch.float64)
    return (sums @ weights / (images.shape[-2] * images.shape[-1])).float()


def _exact_sum(values: torch.Tensor) -> torch.Tensor:
    """N x C x H x W uint8 -> N x C float64 sums over H x W, exact: rows in int32 (an int64
    sum of uint8 is 20x slower on the CPU), then int64."""
    return values.sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int64).double()


def _elastic(images: torch.Tensor, masks: torch.Tensor, shifts: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x H x W float images (bilinear) and N x 1 x H x W uint8 masks (nearest) resampled
    along the field of the control-point `shifts` N x 2 x gh x gw; uncovered borders get 0."""
    if shifts is None:  # `_apply` always passes them (a Step's extra may be None)
        raise DermasegError("elastic deformation: no control-point shifts were drawn")
    height, width = images.shape[-2:]
    field = displacement_field(shifts.to(images.device, torch.float32), height, width)
    return _resample(images, masks, identity_grid(height, width, images.device) + field)


def _zoom(images: torch.Tensor, masks: torch.Tensor, extra: Any
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks zoomed (extra: zoom N x 3, then optionally elastic shifts): the pixel
    at grid point p shows the source at c + (p - c) / scale, plus the elastic field."""
    zoom, *shifts = extra
    height, width = images.shape[-2:]
    zoom = zoom.to(images.device, torch.float32)
    centre = zoom[:, 1:].view(-1, 1, 1, 2)
    grid = (identity_grid(height, width, images.device) - centre) \
        * zoom[:, 0].view(-1, 1, 1, 1) + centre
    if shifts:
        grid = grid + displacement_field(shifts[0].to(images.device, torch.float32),
                                         height, width)
    return _resample(images, masks, grid)


def _resample(images: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x H x W float images (bilinear) and N x 1 x H x W uint8 masks (nearest) sampled
    at `grid` (N x H x W x 2); outside the image: 0."""
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    warped_masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)
    return warped, warped_masks.to(torch.uint8)


@functools.lru_cache(maxsize=16)
def bicubic_weights(steps: int, size: int) -> torch.Tensor:
    """size x steps matrix M: M @ v is `interpolate(v, size, "bicubic", align_corners=True)`.

    Bicubic interpolation is separable, so a field interpolated from a control grid is
    Wy @ grid @ Wx^T: two small matrix products, 10x cheaper than `interpolate` at 512 px.
    """
    basis = torch.eye(steps).view(1, steps, steps, 1)
    columns = F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=True)
    return columns[0, :, :, 0].T.contiguous()


def control_grid_shape(height: int, width: int, spacing: float) -> tuple[int, int]:
    """Rows and columns of elastic control points, one every `spacing` pixels (at least 2)."""
    return max(2, round(height / spacing) + 1), max(2, round(width / spacing) + 1)


def displacement_field(shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Control-point shifts N x 2 (x, y) x gh x gw in pixels -> the bicubically interpolated
    field N x H x W x 2 in grid units ([-1, 1] spans the image), as `grid_sample` and
    torchvision's `elastic` take it.

    This is the control-grid form of elastic deformation (as in the `elasticdeform` package):
    far cheaper than torchvision's `ElasticTransform` (bench/bench_data.py), which blurs a
    full-resolution noise field. Each sample's field is computed alone, with the same
    operations on the same shapes whatever N: a sample deforms identically in any batch (a
    batched product may sum in another order, and round differently, for another N)."""
    rows = upload(bicubic_weights(shifts.shape[-2], height), shifts.device)
    cols_t = upload(bicubic_weights(shifts.shape[-1], width), shifts.device).T
    field = torch.stack([rows @ sample @ cols_t for sample in shifts])  # N x 2 x H x W
    return field.permute(0, 2, 3, 1) * constant((2.0 / width, 2.0 / height), shifts.device)


def identity_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """1 x H x W x 2 sampling grid of pixel centres (`grid_sample`, align_corners=False)."""
    xs = torch.linspace((1 - width) / width, (width - 1) / width, width, device=device)
    ys = torch.linspace((1 - height) / height, (height - 1) / height, height, device=device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)
