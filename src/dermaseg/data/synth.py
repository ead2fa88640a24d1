"""Synthetic dermoscopy images with exact lesion masks, for tests, the demo and benchmarks.

Each image shows skin with smooth tone variation, one irregular pigmented lesion (browns with
some blue-grey, a soft border that is fuzzy on part of its outline, sometimes a pigment network),
on some images hairs, air bubbles and ruler marks, and most often the dark circular field of a
dermoscope. The mask is the lesion's own shape (alpha > 0.5), so it matches what is drawn; hairs
and bubbles over the lesion do not change it, as in ISIC ground truth.

Output is the ISIC flat layout: `synth_0001.jpg` + `synth_0001_segmentation.png` (0/255).
Item i depends only on (seed, i): the same seed gives the same files whatever N is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dermaseg.errors import UsageError
from dermaseg.fileio import MAX_PIXELS, atomic_path, make_folder, save_png_atomic
from dermaseg.progress import progress as progress_bar

WORK_SIDE = 800  # images larger than this are drawn at this size and upscaled
SKIN_TONES = np.array([[228, 186, 166], [214, 160, 134], [196, 144, 112], [236, 200, 182]])
PIGMENTS = np.array(
    [
        [58, 36, 30],  # near-black brown
        [96, 58, 42],  # dark brown
        [140, 92, 64],  # mid brown
        [166, 116, 84],  # light brown
        [104, 104, 122],  # blue-grey
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class SynthOptions:
    """Size and artefact settings; `size` fixes (width, height), else it is drawn per image."""

    size: tuple[int, int] | None = None
    min_side: int = 200
    max_side: int = 400
    hair_p: float = 0.4
    bubble_p: float = 0.25
    ruler_p: float = 0.2
    vignette_p: float = 0.75
    jpeg_quality: int = 92


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, unit-std noise of `shape` (H, W) varying over about `cells` blobs per side."""
    height, width = shape
    grid_h = max(2, round(cells * height / max(shape)) + 2)
    grid_w = max(2, round(cells * width / max(shape)) + 2)
    coarse = Image.fromarray(rng.standard_normal((grid_h, grid_w)).astype(np.float32), mode="F")
    field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    return (field - field.mean()) / (field.std() + 1e-9)


def _skin(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """HxWx3 float skin: a base tone, slow shading, reddish blotches, fine texture."""
    weights = rng.dirichlet(np.ones(len(SKIN_TONES)))
    base = weights @ SKIN_TONES
    shade = 1 + 0.05 * smooth_noise(rng, shape, 3)
    redness = np.clip(smooth_noise(rng, shape, 4) - 0.5, 0, None)[..., None] * np.array([2, -6, -5])
    texture = 3.0 * rng.standard_normal(shape)[..., None]
    return base * shade[..., None] + redness + texture


def _lesion_alpha(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Soft lesion coverage in [0, 1] (HxW) and its base radius in pixels.

    The outline is a radius varying with angle (a few harmonics) plus fine noise; the border
    width varies with angle so part of the outline is sharp and part fuzzy.
    """
    height, width = shape
    side = min(shape)
    r0 = rng.uniform(0.13, 0.36) * side
    cy = height / 2 + rng.uniform(-0.12, 0.12) * height
    cx = width / 2 + rng.uniform(-0.12, 0.12) * width
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    tilt, stretch = rng.uniform(0, np.pi), rng.uniform(0.75, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(tilt) + dy * np.sin(tilt)
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / stretch
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in range(2, 9):
        radius += rng.uniform(0, 0.16 / k**0.8) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    signed = (r0 * radius - np.hypot(u, v)) / r0 + 0.04 * smooth_noise(rng, shape, 14)
    fuzzy_at = rng.uniform(-np.pi, np.pi)
    fuzziness = np.exp(2.5 * (np.cos(theta - fuzzy_at) - 1))  # 1 on one side, ~0 opposite
    border = 0.015 + rng.uniform(0.04, 0.12) * fuzziness
    return 1 / (1 + np.exp(-signed / border)), r0


def _lesion_colour(rng: np.random.Generator, shape: tuple[int, int], r0: float) -> np.ndarray:
    """HxWx3 float lesion colour: pigments mixed by smooth random weights (+ pigment network)."""
    present = rng.random(len(PIGMENTS)) < np.array([0.4, 0.9, 0.8, 0.5, 0.3])
    present[rng.integers(1, 3)] = True
    logits = np.stack([smooth_noise(rng, shape, 5) * 1.6 for _ in PIGMENTS], axis=-1)
    logits[..., ~present] = -np.inf
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    colour = weights @ PIGMENTS
    if rng.random() < 0.5:
        colour *= 1 - 0.15 * _pigment_network(rng, shape, r0)[..., None]
    return colour + 4.0 * rng.standard_normal(shape)[..., None]


def _pigment_network(rng: np.random.Generator, shape: tuple[int, int], r0: float) -> np.ndarray:
    """HxW in [0, 1]: a wobbly grid of dark lines with lighter holes (reticular pattern)."""
    period = rng.uniform(0.12, 0.2) * r0
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    u = xx * np.cos(angle) + yy * np.sin(angle) + 0.3 * period * smooth_noise(rng, shape, 12)
    v = -xx * np.sin(angle) + yy * np.cos(angle) + 0.3 * period * smooth_noise(rng, shape, 12)
    lines = np.exp(-(np.sin(u / period * np.pi) ** 2) / 0.08)
    lines += np.exp(-(np.sin(v / period * np.pi) ** 2) / 0.08)
    return np.clip(lines, 0, 1) * np.clip(0.5 + 0.5 * smooth_noise(rng, shape, 4), 0, 1)


def _draw_hairs(rng: np.random.Generator, layer: ImageDraw.ImageDraw, size: tuple[int, int]):
    """Dark curved hairs crossing the image, several through the centre region."""
    width, height = size
    for _ in range(rng.integers(1, 10)):
        start = rng.uniform([0, 0], [width, height])
        through = rng.uniform([0.3 * width, 0.3 * height], [0.7 * width, 0.7 * height])
        end = 2 * through - start + rng.normal(0, 0.2 * min(size), 2)
        bend = through + rng.normal(0, 0.1 * min(size), 2)
        t = np.linspace(0, 1, 40)[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        shade = int(rng.integers(15, 90))
        hair_width = max(1, round(rng.uniform(0.004, 0.01) * min(size)))
        layer.line(
            [tuple(p) for p in curve],
            fill=(shade, shade - 5, shade - 8, 235),
            width=hair_width,
            joint="curve",
        )


def _draw_bubbles(rng: np.random.Generator, layer: ImageDraw.ImageDraw, size: tuple[int, int]):
    """Air bubbles: thin bright rings with a small highlight."""
    for _ in range(rng.integers(1, 6)):
        radius = rng.uniform(0.02, 0.08) * min(size)
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        layer.ellipse(box, outline=(250, 250, 250, 170), width=max(1, round(radius / 8)))
        hx, hy, hr = cx - radius / 3, cy - radius / 3, radius / 5
        layer.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(255, 255, 255, 120))


def _draw_ruler(rng: np.random.Generator, layer: ImageDraw.ImageDraw, size: tuple[int, int]):
    """A row of millimetre ticks along the top or bottom edge, longer every fifth."""
    width, height = size
    step = rng.uniform(0.02, 0.035) * width
    base = rng.uniform(0.06, 0.12) * height
    y0 = base if rng.random() < 0.5 else height - base
    sign = 1 if y0 < height / 2 else -1
    x = rng.uniform(0.1, 0.2) * width
    for index in range(int(0.6 * width / step)):
        length = (2.2 if index % 5 == 0 else 1.0) * 0.025 * height
        layer.line(
            [(x, y0), (x, y0 + sign * length)],
            fill=(20, 20, 20, 220),
            width=max(1, round(width / 300)),
        )
        x += step


def _vignette(rng: np.random.Generator, shape: tuple[int, int], chance: float) -> np.ndarray:
    """HxW brightness factor: the dark circle of a dermoscope's field, or mild lens fall-off."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    half_diag = 0.5 * np.hypot(height, width)
    cy = height / 2 + rng.normal(0, 0.03) * height
    cx = width / 2 + rng.normal(0, 0.03) * width
    dist = np.hypot(yy - cy, xx - cx)
    falloff = 1 - 0.15 * (dist / half_diag) ** 2
    if rng.random() >= chance:
        return falloff
    radius = rng.uniform(0.72, 0.98) * half_diag
    edge = np.clip((radius - dist) / (0.06 * half_diag), 0, 1)
    return falloff * (0.06 + 0.94 * edge * edge * (3 - 2 * edge))


def synth_pair(rng: np.random.Generator, width: int, height: int, options: SynthOptions):
    """Draw one image and its mask at (width, height).

    Returns:
        image: HxWx3 uint8 RGB; mask: HxW uint8, 255 on the lesion and 0 elsewhere.
    """
    scale = min(1.0, WORK_SIDE / max(width, height))
    work = (max(16, round(height * scale)), max(16, round(width * scale)))
    alpha, r0 = _lesion_alpha(rng, work)
    colour = (
        _skin(rng, work) * (1 - alpha[..., None]) + _lesion_colour(rng, work, r0) * alpha[..., None]
    )
    picture = Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).convert("RGBA")
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for chance, artefact in (
        (options.hair_p, _draw_hairs),
        (options.bubble_p, _draw_bubbles),
        (options.ruler_p, _draw_ruler),
    ):
        if rng.random() < chance:
            artefact(rng, draw, picture.size)
    overlay = overlay.filter(ImageFilter.GaussianBlur(0.6))
    picture = Image.alpha_composite(picture, overlay).convert("RGB")
    shaded = (
        np.asarray(picture, dtype=np.float64) * _vignette(rng, work, options.vignette_p)[..., None]
    )
    picture = Image.fromarray(np.clip(shaded, 0, 255).astype(np.uint8))
    soft = Image.fromarray(alpha.astype(np.float32), mode="F")
    if (width, height) != picture.size:
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)
        soft = soft.resize((width, height), Image.Resampling.BILINEAR)
        grain = rng.standard_normal((height, width), dtype=np.float32) * 3  # sensor-like texture
        picture = np.clip(np.asarray(picture, dtype=np.float32) + grain[..., None], 0, 255)
    mask = np.where(np.asarray(soft) > 0.5, 255, 0).astype(np.uint8)
    return np.asarray(picture, dtype=np.uint8), mask


def _item_size(rng: np.random.Generator, options: SynthOptions) -> tuple[int, int]:
    if options.size is not None:
        return options.size
    long_side = int(rng.integers(options.min_side, options.max_side + 1))
    aspect = rng.uniform(0.66, 1.0)
    short_side = max(16, round(long_side * aspect))
    return (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)


JPEG_MAX_SIDE = 65500  # libjpeg's largest side


def synth_dataset(
    n: int,
    out: str | os.PathLike,
    seed: int = 0,
    options: SynthOptions | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write n pairs `synth_0001.jpg` + `synth_0001_segmentation.png` into `out`.

    Returns:
        The image paths written, in order.

    Raises:
        UsageError: n < 1, a negative seed, or a size out of range (nothing is written).
        DermasegError: `out` is a file or cannot be created.
    """
    options = options or SynthOptions()
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if options.size is not None:
        width, height = options.size
        if min(width, height) < 16 or max(width, height) > JPEG_MAX_SIDE \
                or width * height > MAX_PIXELS:
            raise UsageError(f"--size {width}x{height}: each side 16..{JPEG_MAX_SIDE} (JPEG's "
                             f"limit) and at most {MAX_PIXELS // 10**6} Mpx")
    elif not 16 <= options.min_side <= options.max_side <= JPEG_MAX_SIDE:
        raise UsageError(f"need 16 <= --min-side <= --max-side <= {JPEG_MAX_SIDE}, got "
                         f"{options.min_side}, {options.max_side}")
    out = Path(out)
    make_folder(out)
    digits = max(4, len(str(n)))
    written = []
    for index in progress_bar(range(1, n + 1), desc="synth", unit="image", enabled=progress):
        rng = np.random.default_rng([seed, index])
        width, height = _item_size(rng, options)
        image, mask = synth_pair(rng, width, height, options)
        name = f"synth_{index:0{digits}d}"
        with atomic_path(out / f"{name}.jpg") as tmp:
            Image.fromarray(image).save(tmp, format="JPEG", quality=options.jpeg_quality)
        save_png_atomic(out / f"{name}_segmentation.png", mask)
        written.append(out / f"{name}.jpg")
    return written
