"""The batched training augmentation (`dermaseg.data.augment`), on CPU: against torchvision's
kernels, image and mask moving together, the draws, and the same result on every path (only
the drawn samples computed, or every sample and `torch.where`; any batch; any thread count).
The GPU case is tests/train/test_cuda.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from dermaseg.config import AugmentConfig
from dermaseg.data.augment import (
    BatchAugment,
    augment_on_device,
    bicubic_weights,
    brightness_contrast,
    displacement_field,
    identity_grid,
    mean_grey,
)
from dermaseg.errors import DermasegError

OFF = dict(hflip=0.0, vflip=0.0, brightness=0.0, contrast=0.0, elastic_p=0.0, rotate90=0.0)
EVERYTHING = dict(hflip=0.5, vflip=0.5, rotate90=0.5, brightness=0.2, contrast=0.2,
                  elastic_p=0.5, elastic_alpha=8.0, elastic_sigma=16.0)


def only(**enabled) -> AugmentConfig:
    return AugmentConfig(**(OFF | enabled))


def batch(n: int = 4, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = (torch.rand(n, 1, size, size, generator=generator) > 0.5).to(torch.uint8)
    return images, masks


def lesions(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric lesion masks and images that show them (white lesion on a gradient)."""
    yy, xx = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for i in range(n):
        mask = ((yy - size * 0.35) ** 2 + (xx - size * (0.5 + 0.05 * i)) ** 2) < (size * 0.2) ** 2
        mask |= (yy > size * 0.7) & (xx < size * 0.3)
        image = np.stack([xx * 2, yy * 2, np.full_like(xx, 40 * i)], 0).astype(np.uint8)
        image[:, mask] = 255
        images.append(torch.from_numpy(image))
        masks.append(torch.from_numpy(mask.astype(np.uint8))[None])
    return torch.stack(images), torch.stack(masks)


def params(n: int, augment: BatchAugment, **given):
    drawn = {"hflip": torch.zeros(n, dtype=torch.bool), "vflip": torch.zeros(n, dtype=torch.bool),
             "turns": torch.zeros(n, dtype=torch.long), "brightness": torch.ones(n),
             "contrast": torch.ones(n), "elastic": torch.zeros(n, dtype=torch.bool),
             "shifts": torch.zeros(n, 2, *augment.grid)}
    drawn.update(given)
    return drawn


@pytest.mark.parametrize("branchless", [False, True])
def test_switched_off_is_the_identity(branchless):
    images, masks = batch()
    augment = BatchAugment(only(), 32, 32)
    out_images, out_masks = augment.apply(images, masks, augment.draw([1, 2, 3, 4]),
                                          branchless=branchless)
    assert out_images.dtype == torch.uint8 and torch.equal(out_images, images)
    assert torch.equal(out_masks, masks)


@pytest.mark.parametrize("branchless", [False, True])
def test_flips_and_quarter_turns_per_sample(branchless):
    images, masks = batch()
    augment = BatchAugment(only(hflip=0.5, vflip=0.5, rotate90=0.5), 32, 32)
    given = params(4, augment, hflip=torch.tensor([True, False, True, False]),
                   vflip=torch.tensor([False, False, True, True]),
                   turns=torch.tensor([0, 1, 2, 3]))
    out_images, out_masks = augment.apply(images, masks, given, branchless=branchless)
    for i in range(4):
        expected_image, expected_mask = images[i], masks[i]
        for name, dim in (("hflip", -1), ("vflip", -2)):
            if given[name][i]:
                expected_image, expected_mask = expected_image.flip(dim), expected_mask.flip(dim)
        turns = int(given["turns"][i])
        assert torch.equal(out_images[i], torch.rot90(expected_image, turns, dims=(-2, -1)))
        assert torch.equal(out_masks[i], torch.rot90(expected_mask, turns, dims=(-2, -1)))


@pytest.mark.parametrize("name", ["hflip", "vflip", "rotate90"])
def test_geometry_moves_image_and_mask_together(name):
    images, masks = lesions()
    augment = BatchAugment(only(**{name: 1.0}), 64, 64)
    out_images, out_masks = augment(images, masks, range(4))
    for image, mask, before in zip(out_images, out_masks, masks, strict=True):
        assert torch.equal((image == 255).all(0), mask[0].bool())
        assert not torch.equal(mask, before)


def test_elastic_moves_image_and_mask_together_and_keeps_masks_binary():
    images, masks = lesions(size=96)
    augment = BatchAugment(only(elastic_p=1.0, elastic_alpha=8.0, elastic_sigma=16.0), 96, 96)
    out_images, out_masks = augment(images, masks, range(4))
    assert set(out_masks.unique().tolist()) <= {0, 1}
    for image, mask, before in zip(out_images, out_masks, masks, strict=True):
        white = (image > 200).all(0)  # where the image shows the lesion
        assert (white == mask[0].bool()).float().mean() > 0.98
        assert not torch.equal(mask, before)


def test_brightness_contrast_matches_torchvision():
    images, _ = batch(n=3)
    brightness, contrast = torch.tensor([0.8, 1.0, 1.2]), torch.tensor([1.2, 0.8, 1.0])
    out = brightness_contrast(images, brightness, contrast)
    assert out.dtype == torch.float32
    for i in range(3):
        reference = TF.adjust_contrast(TF.adjust_brightness(images[i].float() / 255,
                                                            float(brightness[i])),
                                       float(contrast[i])) * 255
        torch.testing.assert_close(out[i], reference, atol=1e-3, rtol=0)


def test_mean_grey_is_exact_and_order_free():
    """The grey level of the brightened image from integer sums equals a float64 reference,
    and gives the same bits for a sample whatever its batch or memory layout."""
    images, _ = batch(n=6, size=40, seed=3)
    brightness = torch.tensor([0.8, 1.0, 1.2, 1.5, 3.0, 0.05]).view(-1, 1, 1, 1)
    grey = mean_grey(images, brightness)
    scaled = torch.minimum(images.double() * brightness.double(), torch.tensor(255.0))
    reference = torch.einsum("nchw,c->n", scaled, torch.tensor((0.2989, 0.587, 0.114),
                                                               dtype=torch.float64)) / 40**2
    torch.testing.assert_close(grey.double(), reference, atol=1e-4, rtol=0)
    for i in range(6):
        alone = images[i:i + 1].transpose(-2, -1)  # another layout, a batch of one
        assert torch.equal(mean_grey(alone, brightness[i:i + 1])[0], grey[i])


def test_brightness_and_contrast_ranges():
    """Factors drawn from [0.8, 1.2] at 0.2: measured on a flat and a two-tone image."""
    flat = torch.full((200, 3, 16, 16), 100, dtype=torch.uint8)
    two_tone = flat.clone()
    two_tone[..., 8:] = 160
    masks = torch.zeros(200, 1, 16, 16, dtype=torch.uint8)
    brighter = BatchAugment(only(brightness=0.2), 16, 16)(flat, masks, range(200))[0]
    factors_b = brighter.float().mean((1, 2, 3)) / 100
    contrasted = BatchAugment(only(contrast=0.2), 16, 16)(two_tone, masks, range(200))[0]
    contrasted = contrasted.float()
    factors_c = (contrasted[..., 8:].mean((1, 2, 3)) - contrasted[..., :8].mean((1, 2, 3))) / 60
    for factors in (factors_b, factors_c):
        # each factor measured on uint8 levels: +/- 1/60 for the contrast
        assert 0.78 <= factors.min() < 0.85 and 1.15 < factors.max() <= 1.22


def test_elastic_matches_torchvision_and_leaves_the_others_alone():
    images, masks = batch(n=2)
    augment = BatchAugment(only(elastic_p=1.0, elastic_alpha=4.0, elastic_sigma=8.0), 32, 32)
    shifts = (torch.rand(2, 2, *augment.grid, generator=torch.Generator().manual_seed(5)) * 2
              - 1) * 4.0
    given = params(2, augment, elastic=torch.tensor([True, False]), shifts=shifts)
    out_images, out_masks = augment.apply(images, masks, given)
    field = displacement_field(shifts[:1], 32, 32)
    reference = TF.elastic(images[0].float(), field, fill=None)
    assert (out_images[0].float() - reference).abs().max() <= 0.5 + 1e-3  # rounded to uint8
    reference_mask = TF.elastic(masks[0].float(), field, TF.InterpolationMode.NEAREST, fill=None)
    assert torch.equal(out_masks[0].float(), reference_mask)
    assert not torch.equal(out_images[0], images[0])
    assert torch.equal(out_images[1], images[1])  # not drawn: untouched
    assert torch.equal(out_masks[1], masks[1])


def test_identity_grid_samples_pixel_centres():
    image = torch.arange(35, dtype=torch.float32).view(1, 5, 7)
    sampled = torch.nn.functional.grid_sample(image[None], identity_grid(5, 7, image.device),
                                              align_corners=False)
    torch.testing.assert_close(sampled[0], image)


@pytest.mark.parametrize("steps, height, width", [(17, 512, 512), (5, 64, 90), (2, 7, 3)])
def test_separable_bicubic_field_equals_interpolate(steps, height, width):
    grid = torch.randn(2, steps, steps + 1)
    field = torch.einsum("hk,ckl,wl->chw", bicubic_weights(steps, height), grid,
                         bicubic_weights(steps + 1, width))
    reference = torch.nn.functional.interpolate(grid[None], size=(height, width),
                                                mode="bicubic", align_corners=True)[0]
    assert torch.allclose(field, reference, atol=1e-5)


def test_draws_are_keyed_by_seed_and_follow_the_config():
    config = AugmentConfig()
    augment = BatchAugment(config, 64, 64)
    many = augment.draw(list(range(4000)))
    again = augment.draw([3999, 7])
    for name, values in again.items():
        assert torch.equal(values[0], many[name][3999]) and torch.equal(values[1], many[name][7])
    assert abs(many["hflip"].float().mean() - config.hflip) < 0.03
    assert abs(many["vflip"].float().mean() - config.vflip) < 0.03
    assert abs(many["elastic"].float().mean() - config.elastic_p) < 0.03
    assert not many["turns"].any()  # rotate90 is 0 by default
    for name, spread in (("brightness", config.brightness), ("contrast", config.contrast)):
        values = many[name]
        assert values.min() >= 1 - spread and values.max() <= 1 + spread
        assert values.min() < 1 - 0.95 * spread and values.max() > 1 + 0.95 * spread
    moved = many["shifts"].abs().amax(dim=(1, 2, 3))
    assert torch.equal(moved > 0, many["elastic"])
    assert moved.max() <= config.elastic_alpha


def test_default_config_augments_a_batch():
    images, masks = batch(n=8, size=64)
    augment = BatchAugment(AugmentConfig(), 64, 64)
    out_images, out_masks = augment(images, masks, range(8))
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_images.dtype == out_masks.dtype == torch.uint8
    assert set(out_masks.unique().tolist()) <= {0, 1}
    changed = [not torch.equal(out_images[i], images[i]) for i in range(8)]
    assert all(changed)  # brightness/contrast alone changes every image


@pytest.mark.parametrize("size", [32, 48, 160])
def test_drawn_samples_only_or_every_sample_give_the_same_batch(size):
    """The CPU computes only the drawn samples, a few samples at a time (6 at 160 px), a GPU
    every sample (no synchronisation): the same bits, for batches where none, one, some or
    all samples were drawn for a step."""
    augment = BatchAugment(AugmentConfig(**EVERYTHING), size, size)
    for n in (1, 2, 5, 8):
        for start in range(0, 60, 12):
            images, masks = batch(n, size, seed=start)
            drawn = augment.draw(range(start, start + n))
            indexed = augment.apply(images, masks, drawn, branchless=False)
            branchless = augment.apply(images, masks, drawn, branchless=True)
            assert torch.equal(indexed[0], branchless[0])
            assert torch.equal(indexed[1], branchless[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_sample_is_augmented_the_same_in_any_batch(threads):
    """A sample's result depends on its draw only: not on the rest of its batch, nor on the
    number of threads (loader workers use 1)."""
    augment = BatchAugment(AugmentConfig(**EVERYTHING), 40, 40)
    images, masks = batch(8, 40, seed=1)
    drawn = augment.draw(range(100, 108))
    whole = augment.apply(images, masks, drawn)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i in range(8):
            alone = augment.apply(images[i:i + 1], masks[i:i + 1],
                                  {name: value[i:i + 1] for name, value in drawn.items()})
            assert torch.equal(alone[0][0], whole[0][i]) and torch.equal(alone[1][0], whole[1][i])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("place", "on_gpu", "expected"), [
    ("auto", True, True), ("auto", False, False), ("loader", True, False),
    ("device", False, True)])
def test_where_the_augmentation_runs(place, on_gpu, expected):
    assert augment_on_device(place, on_gpu) is expected


def test_unknown_place_is_refused_by_field_name():
    with pytest.raises(DermasegError, match="data.augment_on.*'gpu'"):
        augment_on_device("gpu", True)


def test_channels_of_a_bright_image_stay_in_range():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(200, 256, (1, 3, 16, 16), dtype=np.uint8))
    out = brightness_contrast(image, torch.tensor([1.2]), torch.tensor([1.2]))
    assert out.max() == 255 and out.min() >= 0
