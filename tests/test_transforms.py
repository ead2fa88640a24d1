"""Joint image/mask augmentation: masks stay binary and move with the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, Config, DataConfig
from dermaseg.data.transforms import SegmentationTransform, build_transform

OFF = dict(hflip=0.0, vflip=0.0, brightness=0.0, contrast=0.0, elastic_p=0.0, rotate90=0.0)
ONLY = {
    "hflip": dict(hflip=1.0),
    "vflip": dict(vflip=1.0),
    "rotate90": dict(rotate90=1.0),
    "brightness": dict(brightness=0.2),
    "contrast": dict(contrast=0.2),
    "elastic": dict(elastic_p=1.0, elastic_alpha=8.0, elastic_sigma=16.0),
    "everything": dict(hflip=0.5, vflip=0.5, rotate90=0.5, brightness=0.2, contrast=0.2,
                       elastic_p=1.0),
}


def _only(**enabled) -> AugmentConfig:
    return AugmentConfig(**(OFF | enabled))


def _sample(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric lesion mask (0/1) and an image that shows it: white lesion on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (((yy - size * 0.35) ** 2 + (xx - size * 0.6) ** 2) < (size * 0.2) ** 2)
    mask |= (yy > size * 0.7) & (xx < size * 0.3)
    image = np.stack([xx * 2, yy * 2, rng.integers(0, 60, (size, size))], -1).astype(np.uint8)
    image[mask] = 255
    return image, mask.astype(np.uint8)


def _denormalise(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", list(ONLY))
def test_masks_stay_binary(name):
    transform = SegmentationTransform(augment=_only(**ONLY[name]))
    torch.manual_seed(0)
    for seed in range(8):
        image, mask = _sample(seed=seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
        assert out_mask.shape == (1, 64, 64) and out_mask.dtype == torch.float32
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name, expected", [
    ("hflip", lambda a: a[:, ::-1]),
    ("vflip", lambda a: a[::-1]),
])
def test_flips_move_image_and_mask_together(name, expected):
    image, mask = _sample()
    out_image, out_mask = SegmentationTransform(augment=_only(**ONLY[name]))(image, mask)
    assert np.array_equal(out_mask[0].numpy(), expected(mask))
    assert np.abs(_denormalise(out_image).astype(int) - expected(image)).max() <= 1


def test_rotate90_moves_image_and_mask_together():
    image, mask = _sample()
    transform = SegmentationTransform(augment=_only(rotate90=1.0))
    seen = set()
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        turns = [k for k in (1, 2, 3) if np.array_equal(out_mask[0].numpy(), np.rot90(mask, k))]
        assert len(turns) == 1
        seen.add(turns[0])
        rotated = np.rot90(image, turns[0])
        assert np.abs(_denormalise(out_image).astype(int) - rotated).max() <= 1
    assert seen == {1, 2, 3}


def test_elastic_moves_image_and_mask_together():
    image, mask = _sample(size=96)
    transform = SegmentationTransform(augment=_only(**ONLY["elastic"]))
    torch.manual_seed(1)
    changed = 0
    for _ in range(5):
        out_image, out_mask = transform(image, mask)
        white = (_denormalise(out_image) > 200).all(-1)  # where the image shows the lesion
        agree = (white == out_mask[0].numpy().astype(bool)).mean()
        assert agree > 0.98
        changed += int((out_mask[0].numpy() != mask).sum())
    assert changed > 0


def test_brightness_and_contrast_ranges():
    flat = np.full((32, 32, 3), 100, np.uint8)
    two_tone = flat.copy()
    two_tone[:, 16:] = 160
    zeros = np.zeros((32, 32), np.uint8)
    brighten = SegmentationTransform(augment=_only(brightness=0.2))
    contrast = SegmentationTransform(augment=_only(contrast=0.2))
    torch.manual_seed(0)
    factors_b, factors_c = [], []
    for _ in range(120):
        out = _denormalise(brighten(flat, zeros)[0]).astype(float)
        factors_b.append(out.mean() / 100)
        out = _denormalise(contrast(two_tone, zeros)[0]).astype(float)
        factors_c.append((out[:, 16:].mean() - out[:, :16].mean()) / 60)
    for factors in (factors_b, factors_c):
        assert 0.79 <= min(factors) < 0.85 and 1.15 < max(factors) <= 1.21


def test_evaluation_transform_only_normalises():
    image, mask = _sample()
    config = DataConfig(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    out_image, out_mask = build_transform(config, train=False)(image, mask)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(out_image, expected, atol=1e-5)
    assert torch.equal(out_mask[0], torch.from_numpy(mask).float())
    switched_off = SegmentationTransform(augment=_only())(image, mask)
    plain = SegmentationTransform()(image, mask)
    assert all(torch.equal(a, b) for a, b in zip(switched_off, plain, strict=True))


@pytest.mark.parametrize("brightness, contrast", [(1.0, 1.0), (1.2, 1.0), (0.8, 1.0),
                                                  (1.0, 0.8), (1.0, 1.2), (1.17, 0.83),
                                                  (0.85, 1.19)])
def test_brightness_contrast_lookup_matches_torchvision(brightness, contrast):
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    from dermaseg.data.transforms import BrightnessContrast

    image, _ = _sample(size=48, seed=3)
    pixels = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    ours = BrightnessContrast().transform(pixels, {"brightness": brightness,
                                                   "contrast": contrast})
    # torchvision's reference, in float so that only our single rounding differs
    reference = F.adjust_contrast(F.adjust_brightness(pixels.float() / 255, brightness),
                                  contrast) * 255
    assert ours.dtype == torch.uint8 and ours.shape == pixels.shape
    assert (ours.float() - reference).abs().max() <= 1.0
    mask = tv_tensors.Mask(torch.ones(1, 48, 48, dtype=torch.uint8))
    assert BrightnessContrast().transform(mask, {"brightness": 2.0, "contrast": 2.0}) is mask


def test_uint8_output_normalised_later_equals_float_output():
    from dermaseg.data.transforms import normalise_images

    image, mask = _sample()
    config = Config().data  # mean/std filled from the backbone
    as_float = build_transform(config, train=False)(image, mask)
    as_bytes = build_transform(config, train=False, as_uint8=True)(image, mask)
    assert as_bytes[0].dtype == torch.uint8 and as_bytes[1].dtype == torch.uint8
    batch = torch.stack([as_bytes[0], as_bytes[0]])  # the loader collates, the device normalises
    assert torch.equal(normalise_images(batch, config.mean, config.std)[1], as_float[0])
    assert torch.equal(as_bytes[1].float(), as_float[1])


@pytest.mark.parametrize("steps, height, width", [(17, 512, 512), (5, 64, 90), (2, 7, 3)])
def test_separable_bicubic_field_equals_interpolate(steps, height, width):
    from dermaseg.data.transforms import bicubic_weights

    grid = torch.randn(2, steps, steps + 1)
    field = torch.einsum("hk,ckl,wl->chw", bicubic_weights(steps, height), grid,
                         bicubic_weights(steps + 1, width))
    reference = torch.nn.functional.interpolate(grid[None], size=(height, width),
                                                mode="bicubic", align_corners=True)[0]
    assert torch.allclose(field, reference, atol=1e-5)
