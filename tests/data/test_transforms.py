"""The (non-augmenting) conversion of prepared arrays to tensors, and normalisation; the
augmentation is tests/data/test_augment.py."""

from __future__ import annotations

import numpy as np
import torch

from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD, Config, DataConfig
from dermaseg.data.transforms import SegmentationTransform, build_transform


def _sample(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric lesion mask (0/1) and an image that shows it: white lesion on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (((yy - size * 0.35) ** 2 + (xx - size * 0.6) ** 2) < (size * 0.2) ** 2)
    mask |= (yy > size * 0.7) & (xx < size * 0.3)
    image = np.stack([xx * 2, yy * 2, rng.integers(0, 60, (size, size))], -1).astype(np.uint8)
    image[mask] = 255
    return image, mask.astype(np.uint8)


def test_evaluation_transform_only_normalises():
    image, mask = _sample()
    config = DataConfig(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    out_image, out_mask = build_transform(config)(image, mask)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(out_image, expected, atol=1e-5)
    assert out_mask.shape == (1, 64, 64) and out_mask.dtype == torch.float32
    assert torch.equal(out_mask[0], torch.from_numpy(mask).float())
    default = SegmentationTransform()(image, mask)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = (default * std + mean) * 255
    assert torch.allclose(restored, torch.from_numpy(image).permute(2, 0, 1).float(), atol=1e-3)


def test_uint8_output_normalised_later_equals_float_output():
    from dermaseg.data.transforms import normalise_images

    image, mask = _sample()
    config = Config().data  # mean/std filled from the backbone
    as_float = build_transform(config)(image, mask)
    as_bytes = build_transform(config, as_uint8=True)(image, mask)
    assert as_bytes[0].dtype == torch.uint8 and as_bytes[1].dtype == torch.uint8
    batch = torch.stack([as_bytes[0], as_bytes[0]])  # the loader collates, the device normalises
    assert torch.equal(normalise_images(batch, config.mean, config.std)[1], as_float[0])
    assert torch.equal(as_bytes[1].float(), as_float[1])
