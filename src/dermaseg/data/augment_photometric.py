"""The training augmentation's image-only steps for other clinics' dermoscopes: gamma,
saturation and hue, hair, a dermoscope vignette, blur and noise (`data.augment.*`, all off at
0). `dermaseg.data.augment` draws their parameters after its own (its draws stay as they were)
and applies them to whole batches; the masks are left alone.

Each sample's parameters come from its generator (`PhotometricDraw.draw_one`, on the CPU): a
gamma lookup table, a 3 x 3 colour matrix, blur kernel weights, hair lines, a circle. Applying
them takes only exact operations (lookups, products and sums each rounded once, square roots,
clamps), so a sample gives the same bits in any batch, on any number of threads, on every path
of `BatchAugment.apply`. Functions not exact in floating point (`pow`, `exp`, `cos`) run in
the draw, on the CPU, where the shapes never depend on the batch.

Noise: a fresh Gaussian field per sample would cost the CPU (which draws for a GPU too)
~3 ms per 512 px image, so each sample takes a random crop of a fixed Gaussian noise image twice
its size (the same on every device, seeded by `NOISE_SEED`), scaled by its own signed standard
deviation.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from dermaseg.config import AugmentConfig
from dermaseg.upload import upload

HAIRS = 4  # at most this many hairs per image (1 to HAIRS drawn)
HAIR_LENGTH = (0.3, 1.2)  # fractions of the image side
HAIR_WIDTH = (0.004, 0.01)  # fractions of the side: 0.8-1.9 px at 192 px, 2-5 px at 512
HAIR_SAG = 0.1  # largest sag of a hair's ends from its straight line, fraction of the side
HAIR_DARKNESS = (10.0, 60.0)  # the hair's red level (0..255); green and blue as HAIR_TINT
HAIR_TINT = (1.0, 0.75, 0.6)
HAIR_OPACITY = (0.6, 1.0)
VIGNETTE_RADIUS = (0.45, 0.75)  # fractions of the side (0.5: the inscribed circle)
VIGNETTE_SHIFT = 0.05  # largest offset of its centre from the image's, fraction of the side
VIGNETTE_EDGE = 0.03  # width of its soft edge, fraction of the side
NOISE_SEED = 20240519
# RGB -> YIQ (NTSC): Y the luma, I and Q the chroma; hue rotates (I, Q), saturation scales it
YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213],
                    [0.2115, -0.5227, 0.3112]], dtype=torch.float64)
YIQ_INVERSE = torch.linalg.inv(YIQ)


class PhotometricDraw:
    """Draws the image-only steps' parameters of one sample (`draw_one`), in a fixed order,
    only those of the steps switched on: with all of them off nothing is drawn."""

    def __init__(self, config: AugmentConfig, height: int, width: int) -> None:
        self.config = config
        self.height, self.width, self.side = height, width, max(height, width)
        self.radius = math.ceil(3 * config.blur_sigma)  # blur kernel: 2 * radius + 1 taps

    def draw_one(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{name: tensor} for one sample (`BatchAugment.draw` stacks them): colour 3 x 3
        float32; gamma_lut (256,) uint8; blur () bool and blur_weights (taps,) float32;
        hair () bool, hair_lines HAIRS x 7 and hair_tint (4,) float32; vignette () bool and
        vignette_circle (3,) float32; noise_std () float32, noise_offset (2,) int64."""
        config, row = self.config, {}

        def uniform(count: int) -> torch.Tensor:
            return torch.rand(count, generator=generator, dtype=torch.float64)

        if config.gamma > 0:
            row["gamma_lut"] = gamma_table(math.exp((2 * float(uniform(1)) - 1)
                                                    * math.log1p(config.gamma)))
        if config.hue > 0 or config.saturation > 0:
            hue, saturation = (2 * uniform(2) - 1).tolist()
            row["colour"] = colour_matrix(hue * config.hue, 1 + saturation * config.saturation)
        if config.hair_p > 0:
            row.update(self._hair(uniform(4 + 6 * HAIRS).tolist()))
        if config.vignette_p > 0:
            chance, dx, dy, radius = uniform(4).tolist()
            shift, (low, high) = VIGNETTE_SHIFT * self.side, VIGNETTE_RADIUS
            row["vignette"] = torch.tensor(chance < config.vignette_p)
            row["vignette_circle"] = torch.tensor(
                [self.width / 2 + (2 * dx - 1) * shift, self.height / 2 + (2 * dy - 1) * shift,
                 (low + (high - low) * radius) * self.side], dtype=torch.float32)
        if config.blur_p > 0:
            chance, sigma = uniform(2).tolist()
            row["blur"] = torch.tensor(chance < config.blur_p)
            row["blur_weights"] = gaussian_taps(config.blur_sigma * (0.25 + 0.75 * sigma),
                                                self.radius)
        if config.noise > 0:
            std, dy, dx = uniform(3).tolist()
            row["noise_std"] = torch.tensor((2 * std - 1) * config.noise, dtype=torch.float32)
            row["noise_offset"] = torch.tensor([min(int(dy * (self.height + 1)), self.height),
                                                min(int(dx * (self.width + 1)), self.width)])
        return row

    def _hair(self, u: list[float]) -> dict[str, torch.Tensor]:
        """hair, hair_lines (per line: x, y of its middle, direction cos and sin, half length,
        half width (-1: no line), bend: the normal offset per squared length, pixels) and
        hair_tint (RGB 0..255, opacity) from 4 + 6 * HAIRS uniform numbers. In plain Python
        (a few microseconds); only for a sample drawn for hair (the others: no lines)."""
        chance, count, darkness, opacity = u[:4]
        drawn = chance < self.config.hair_p
        lines = [[0.0, 0.0, 1.0, 0.0, 1.0, -1.0, 0.0] for _ in range(HAIRS)]
        for i in range(int(count * HAIRS) + 1 if drawn else 0):  # 1 to HAIRS lines
            x, y, angle, length, width, sag = u[4 + 6 * i: 10 + 6 * i]
            half_length = _between(HAIR_LENGTH, length) * self.side / 2
            lines[i] = [x * self.width, y * self.height, math.cos(angle * math.pi),
                        math.sin(angle * math.pi), half_length,
                        _between(HAIR_WIDTH, width) * self.side / 2,
                        (2 * sag - 1) * HAIR_SAG * self.side / half_length ** 2]
        level = _between(HAIR_DARKNESS, darkness)
        tint = [level * t for t in HAIR_TINT] + [_between(HAIR_OPACITY, opacity)]
        return {"hair": torch.tensor(drawn), "hair_lines": torch.tensor(lines, dtype=torch.float32),
                "hair_tint": torch.tensor(tint, dtype=torch.float32)}


def _between(bounds: tuple[float, float], fraction: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * fraction


def gamma_table(gamma: float) -> torch.Tensor:
    """(256,) uint8 lookup table of round(255 (v / 255)^gamma): 0 and 255 stay."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    return (levels ** gamma * 255).round_().clamp_(0, 255).to(torch.uint8)


def colour_matrix(hue: float, saturation: float) -> torch.Tensor:
    """3 x 3 float32 RGB matrix: the chroma (YIQ's I, Q) rotated by `hue` turns and scaled by
    `saturation`, the luma kept. Saturation alone is torchvision's adjust_saturation (a blend
    with the grey image) with the YIQ luma weights."""
    angle = 2 * math.pi * hue
    cos, sin = math.cos(angle) * saturation, math.sin(angle) * saturation
    chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]],
                          dtype=torch.float64)
    return (YIQ_INVERSE @ chroma @ YIQ).float()


def gaussian_taps(sigma: float, radius: int) -> torch.Tensor:
    """(2 radius + 1,) float32 weights of a normalised Gaussian of `sigma` pixels, exactly
    symmetric."""
    half = torch.exp(-torch.arange(radius + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    weights = torch.cat([half.flip(0)[:-1], half])
    return (weights / weights.sum()).float()


def apply_gamma(images: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W uint8 images through their own (N x 256 uint8) lookup table."""
    base = torch.arange(len(images), device=images.device, dtype=torch.int32).mul_(256)
    where = images.int().add_(base.view(-1, 1, 1, 1)).reshape(-1)  # int32: 2x faster than int64
    return tables.to(images.device).view(-1).index_select(0, where).view(images.shape)


def recolour(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W float images times their own 3 x 3 colour matrix (N x 3 x 3), clipped to
    [0, 255]; each product and sum rounded on its own (exact on every path)."""
    matrices = matrices.to(images.device, torch.float32).view(-1, 3, 3, 1, 1)
    red, green, blue = images.unbind(1)
    channels = [red * matrices[:, c, 0] + green * matrices[:, c, 1] + blue * matrices[:, c, 2]
                for c in range(3)]
    return torch.stack(channels, dim=1).clamp_(0, 255)


def late_steps(config: AugmentConfig, params: dict[str, torch.Tensor]) -> list[tuple]:
    """(flags (N,), step function, its extra) for hair, vignette, blur and noise, in that
    order, those switched on (`BatchAugment._apply` runs them as its other steps)."""
    steps: list[tuple] = []
    if config.hair_p > 0:
        steps.append((params["hair"], _hair, (params["hair_lines"], params["hair_tint"])))
    if config.vignette_p > 0:
        steps.append((params["vignette"], _vignette, params["vignette_circle"]))
    if config.blur_p > 0:
        steps.append((params["blur"], _blur, params["blur_weights"]))
    if config.noise > 0:
        steps.append((params["noise_std"] != 0, _noise,
                      (params["noise_std"], params["noise_offset"])))
    return steps


def _pixel_centres(size: int, device: torch.device) -> torch.Tensor:
    return torch.arange(size, device=device, dtype=torch.float32).add_(0.5)


def _hair(images: torch.Tensor, masks: torch.Tensor, extra: Any
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark, slightly bent, anti-aliased lines over N x 3 x H x W float images: in each line's
    frame (u along, v across) a pixel's coverage is clamp(half width + 1/2 - |v - bend u^2|)
    times clamp(half length + 1/2 - |u|); the lines' largest coverage times the opacity blends
    the image toward the tint."""
    lines, tint = (value.to(images.device, torch.float32) for value in extra)
    x, y, cos, sin, half_length, half_width, bend = (
        value.view(*value.shape, 1, 1) for value in lines.unbind(-1))  # N x HAIRS x 1 x 1
    across_x = _pixel_centres(images.shape[-1], images.device) - x  # N x HAIRS x 1 x W
    across_y = _pixel_centres(images.shape[-2], images.device).view(-1, 1) - y  # ... x H x 1
    along = across_x * cos + across_y * sin  # N x HAIRS x H x W
    off = across_y * cos - across_x * sin
    off = off.sub_(along.square().mul_(bend)).abs_()
    coverage = (half_width + 0.5 - off).clamp_(0, 1)
    coverage = coverage.mul_((half_length + 0.5 - along.abs_()).clamp_(0, 1))
    alpha = coverage.amax(1, keepdim=True).mul_(tint[:, 3].view(-1, 1, 1, 1))
    towards = tint[:, :3].view(-1, 3, 1, 1) - images
    return images + towards.mul_(alpha), masks


def _vignette(images: torch.Tensor, masks: torch.Tensor, extra: Any
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x H x W float images darkened to 0 outside a circle (N x 3: x, y, radius in
    pixels), over a soft edge VIGNETTE_EDGE of the side wide."""
    circle = extra.to(images.device, torch.float32).view(-1, 3, 1, 1)
    height, width = images.shape[-2:]
    dx = (_pixel_centres(width, images.device) - circle[:, 0:1]).square_()  # N x 1 x 1 x W
    dy = (_pixel_centres(height, images.device).view(-1, 1) - circle[:, 1:2]).square_()
    outside = (dx + dy).sqrt_().sub_(circle[:, 2:3]).div_(VIGNETTE_EDGE * max(height, width))
    return images * (1 - outside.clamp_(0, 1)), masks


def _blur(images: torch.Tensor, masks: torch.Tensor, extra: Any
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x H x W float images blurred by their own separable kernel (N x taps weights),
    borders replicated."""
    weights = extra.to(images.device, torch.float32)
    radius = weights.shape[1] // 2
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = _weighted_shifts(padded, weights, -1, images.shape[-1])
    return _weighted_shifts(rows, weights, -2, images.shape[-2]), masks


def _weighted_shifts(values: torch.Tensor, weights: torch.Tensor, dim: int, size: int
                     ) -> torch.Tensor:
    """sum over k of weights[:, k] * values shifted by k along `dim` (`size` long), for
    symmetric weights (`gaussian_taps`): the middle tap, then each pair of taps k and -k
    summed and weighted once, in order of k; each operation rounded on its own."""
    radius = weights.shape[1] // 2
    total = values.narrow(dim, radius, size) * weights[:, radius].view(-1, 1, 1, 1)
    for k in range(1, radius + 1):
        pair = values.narrow(dim, radius - k, size) + values.narrow(dim, radius + k, size)
        total = total.add_(pair.mul_(weights[:, radius + k].view(-1, 1, 1, 1)))
    return total


@functools.lru_cache(maxsize=8)
def noise_image(height: int, width: int, device: torch.device) -> torch.Tensor:
    """3 x 2H x 2W float32 standard Gaussian noise, the same on every device (read-only)."""
    with torch.inference_mode(False):
        generator = torch.Generator().manual_seed(NOISE_SEED)
        return upload(torch.randn(3, 2 * height, 2 * width, generator=generator), device)


def _noise(images: torch.Tensor, masks: torch.Tensor, extra: Any
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x H x W float images plus their crop (N x 2 offsets: row, column) of
    `noise_image` times their standard deviation (N,), clipped to [0, 255]."""
    std, offset = (value.to(images.device) for value in extra)
    height, width = images.shape[-2:]
    bank = noise_image(height, width, images.device)
    rows = offset[:, 0].view(-1, 1, 1) + torch.arange(height, device=images.device).view(-1, 1)
    columns = offset[:, 1].view(-1, 1, 1) + torch.arange(width, device=images.device)
    where = rows.mul_(2 * width) + columns  # N x H x W positions in a channel of the bank
    noise = bank.view(3, -1).index_select(1, where.view(-1)).view(3, len(images), height, width)
    noise = noise.mul_(std.to(torch.float32).view(1, -1, 1, 1)).transpose(0, 1)
    return images.add(noise).clamp_(0, 255), masks
