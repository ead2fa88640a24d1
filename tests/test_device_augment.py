"""Batched augmentation on the training device (`dermaseg.data.device_augment`), checked on CPU
against torchvision's kernels and against the loader-side transform."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from dermaseg.config import AugmentConfig
from dermaseg.data.device_augment import (
    DeviceAugment,
    augment_on_device,
    brightness_contrast,
    identity_grid,
)
from dermaseg.data.transforms import displacement_field
from dermaseg.errors import DermasegError

OFF = AugmentConfig(hflip=0, vflip=0, brightness=0, contrast=0, elastic_p=0, rotate90=0)


def batch(n: int = 4, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = (torch.rand(n, 1, size, size, generator=generator) > 0.5).to(torch.uint8)
    return images, masks


def params(n: int, size: int, augment: DeviceAugment, **given):
    drawn = {"hflip": torch.zeros(n, dtype=torch.bool), "vflip": torch.zeros(n, dtype=torch.bool),
             "turns": torch.zeros(n, dtype=torch.long), "brightness": torch.ones(n),
             "contrast": torch.ones(n), "elastic": torch.zeros(n, dtype=torch.bool),
             "shifts": torch.zeros(n, 2, *augment.grid)}
    drawn.update(given)
    return drawn


def test_switched_off_is_the_identity():
    images, masks = batch()
    augment = DeviceAugment(OFF, 32, 32)
    out_images, out_masks = augment.apply(images, masks, augment.draw([1, 2, 3, 4]))
    assert out_images.dtype == torch.float32 and torch.equal(out_images, images.float())
    assert torch.equal(out_masks, masks)


def test_flips_and_quarter_turns_per_sample():
    images, masks = batch()
    config = dataclasses.replace(OFF, rotate90=0.5)
    augment = DeviceAugment(config, 32, 32)
    given = params(4, 32, augment, hflip=torch.tensor([True, False, True, False]),
                   vflip=torch.tensor([False, False, True, True]),
                   turns=torch.tensor([0, 1, 2, 3]))
    out_images, out_masks = augment.apply(images, masks, given)
    for i in range(4):
        expected_image, expected_mask = images[i].float(), masks[i]
        for name, dim in (("hflip", -1), ("vflip", -2)):
            if given[name][i]:
                expected_image, expected_mask = expected_image.flip(dim), expected_mask.flip(dim)
        turns = int(given["turns"][i])
        assert torch.equal(out_images[i], torch.rot90(expected_image, turns, dims=(-2, -1)))
        assert torch.equal(out_masks[i], torch.rot90(expected_mask, turns, dims=(-2, -1)))


def test_brightness_contrast_matches_torchvision():
    images, _ = batch(n=3)
    brightness, contrast = torch.tensor([0.8, 1.0, 1.2]), torch.tensor([1.2, 0.8, 1.0])
    out = brightness_contrast(images.float(), brightness, contrast)
    for i in range(3):
        reference = TF.adjust_contrast(TF.adjust_brightness(images[i].float() / 255,
                                                            float(brightness[i])),
                                       float(contrast[i])) * 255
        torch.testing.assert_close(out[i], reference, atol=1e-3, rtol=0)


def test_elastic_matches_torchvision_and_keeps_masks_binary():
    images, masks = batch(n=2)
    config = dataclasses.replace(OFF, elastic_p=1.0, elastic_alpha=4.0, elastic_sigma=8.0)
    augment = DeviceAugment(config, 32, 32)
    shifts = (torch.rand(2, 2, *augment.grid, generator=torch.Generator().manual_seed(5)) * 2
              - 1) * 4.0
    given = params(2, 32, augment, elastic=torch.tensor([True, False]), shifts=shifts)
    out_images, out_masks = augment.apply(images, masks, given)
    field = displacement_field(shifts[:1], 32, 32)
    reference = TF.elastic(images[0].float(), field, fill=None)
    torch.testing.assert_close(out_images[0], reference, atol=1e-3, rtol=1e-5)
    reference_mask = TF.elastic(masks[0].float(), field, TF.InterpolationMode.NEAREST, fill=None)
    assert torch.equal(out_masks[0].float(), reference_mask)
    assert not torch.equal(out_images[0], images[0].float())
    assert torch.equal(out_images[1], images[1].float())  # not drawn: untouched
    assert torch.equal(out_masks[1], masks[1])
    assert set(out_masks.unique().tolist()) <= {0, 1}


def test_identity_grid_samples_pixel_centres():
    image = torch.arange(35, dtype=torch.float32).view(1, 5, 7)
    sampled = torch.nn.functional.grid_sample(image[None], identity_grid(5, 7, image.device),
                                              align_corners=False)
    torch.testing.assert_close(sampled[0], image)


def test_draws_are_keyed_by_seed_and_follow_the_config():
    config = AugmentConfig()
    augment = DeviceAugment(config, 64, 64)
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


def test_default_config_augments_a_batch_on_the_fly():
    images, masks = batch(n=8, size=64)
    augment = DeviceAugment(AugmentConfig(), 64, 64)
    out_images, out_masks = augment.apply(images, masks, augment.draw(list(range(8))))
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_images.min() >= 0 and out_images.max() <= 255
    assert set(out_masks.unique().tolist()) <= {0, 1}
    changed = [not torch.equal(out_images[i], images[i].float()) for i in range(8)]
    assert all(changed)  # brightness/contrast alone changes every image


@pytest.mark.parametrize(("place", "on_gpu", "expected"), [
    ("auto", True, True), ("auto", False, False), ("loader", True, False),
    ("device", False, True)])
def test_where_the_augmentation_runs(place, on_gpu, expected):
    assert augment_on_device(place, on_gpu) is expected


def test_unknown_place_is_refused_by_field_name():
    with pytest.raises(DermasegError, match="data.augment_on.*'gpu'"):
        augment_on_device("gpu", True)


def test_channels_of_a_real_image_stay_in_range():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(200, 256, (1, 3, 16, 16), dtype=np.uint8))
    out = brightness_contrast(image.float(), torch.tensor([1.2]), torch.tensor([1.2]))
    assert out.max() == 255 and out.min() >= 0
