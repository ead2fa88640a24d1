"""The augmentation steps for other clinics' dermoscopes (`data.augment.scale`, hue, saturation,
gamma, blur, noise, vignette, hair; `dermaseg.data.augment_photometric`), on CPU: off, they
leave the draws and batches as before; on, each does what it says to the image (and the zoom
to the mask with it); every path still gives the same bits. The GPU case is
tests/train/test_cuda.py."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from dermaseg.config import AugmentConfig
from dermaseg.data.augment import BatchAugment
from dermaseg.data.augment_photometric import HAIRS, colour_matrix, gaussian_taps, recolour

OFF = dict(hflip=0.0, vflip=0.0, brightness=0.0, contrast=0.0, elastic_p=0.0, rotate90=0.0)
OLD = dict(hflip=0.5, vflip=0.5, rotate90=0.5, brightness=0.2, contrast=0.2, elastic_p=0.5,
           elastic_alpha=8.0, elastic_sigma=16.0)
NEW = dict(scale=0.3, hue=0.05, saturation=0.3, gamma=0.5, blur_p=0.5, blur_sigma=1.5,
           noise=8.0, vignette_p=0.5, hair_p=0.5)
OLD_KEYS = {"hflip", "vflip", "turns", "brightness", "contrast", "elastic", "shifts"}


def only(**enabled) -> AugmentConfig:
    return AugmentConfig(**(OFF | enabled))


def batch(n: int = 4, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = (torch.rand(n, 1, size, size, generator=generator) > 0.5).to(torch.uint8)
    return images, masks


def flat(n: int, size: int, level: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((n, 3, size, size), level, dtype=torch.uint8),
            torch.zeros(n, 1, size, size, dtype=torch.uint8))


def discs(n: int = 6, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesions of one colour (200, 40, 40), discs of different places and sizes, on a grey-
    green gradient that never comes near that colour."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for i in range(n):
        cy, cx, radius = size * (0.35 + 0.05 * i), size * (0.6 - 0.04 * i), size * (0.1 + 0.03 * i)
        mask = (ys - cy) ** 2 + (xs - cx) ** 2 < radius ** 2
        image = torch.stack([xs // 4 + 40, 100 + ys // 2, torch.full_like(xs, 90)]).to(torch.uint8)
        image[:, mask] = torch.tensor([200, 40, 40], dtype=torch.uint8).view(3, 1)
        images.append(image)
        masks.append(mask[None].to(torch.uint8))
    return torch.stack(images), torch.stack(masks)


def test_off_by_default_and_draws_nothing_new():
    config = AugmentConfig()
    assert all(getattr(config, name) == 0 for name in NEW if name != "blur_sigma")
    assert set(BatchAugment(config, 32, 32).draw([1, 2])) == OLD_KEYS


@pytest.mark.parametrize("name", sorted(set(NEW) - {"blur_sigma"}))
def test_a_new_option_leaves_the_earlier_draws_as_they_were(name):
    """New parameters are drawn after the others: turning an option on changes no earlier
    draw of any sample (a recipe without it gives the batches it gave before)."""
    seeds = list(range(50))
    before = BatchAugment(AugmentConfig(**OLD), 48, 48).draw(seeds)
    after = BatchAugment(AugmentConfig(**(OLD | {name: NEW[name]})), 48, 48).draw(seeds)
    assert set(after) > OLD_KEYS
    for key in OLD_KEYS:
        assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize("name", ["blur_p", "vignette_p", "hair_p"])
def test_an_option_drawn_for_no_sample_changes_no_bit(name):
    """On, but drawn for no sample (a tiny probability): the batch is the one without it."""
    images, masks = batch(6, 40, seed=2)
    plain = BatchAugment(AugmentConfig(**OLD), 40, 40)
    rare = BatchAugment(AugmentConfig(**(OLD | {name: 1e-9})), 40, 40)
    drawn = rare.draw(range(6))
    assert not drawn[name.removesuffix("_p")].any()
    for branchless in (False, True):
        expected = plain.apply(images, masks, plain.draw(range(6)), branchless=branchless)
        got = rare.apply(images, masks, drawn, branchless=branchless)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_gamma_bends_mid_greys_and_keeps_black_and_white():
    images = torch.zeros(64, 3, 4, 4, dtype=torch.uint8)
    images[..., 1, :], images[..., 2, :], images[..., 3, :] = 128, 255, 64
    masks = torch.zeros(64, 1, 4, 4, dtype=torch.uint8)
    out, out_masks = BatchAugment(only(gamma=0.5), 4, 4)(images, masks, range(64))
    assert (out[..., 0, :] == 0).all() and (out[..., 2, :] == 255).all()
    mid = out[:, 0, 1, 0].float()  # gamma in [1/1.5, 1.5]: 255 (128/255)^gamma
    assert mid.min() >= math.floor(255 * (128 / 255) ** 1.5)
    assert mid.max() <= math.ceil(255 * (128 / 255) ** (1 / 1.5))
    assert mid.min() < 110 and mid.max() > 145  # both ways
    dark = out[:, 0, 3, 0]
    assert torch.equal(dark < 64, mid < 128)  # the same gamma moves every level one way
    assert torch.equal(out_masks, masks)


def test_saturation_is_torchvisions_and_hue_turns_the_chroma():
    images, _ = batch(3, 16, seed=4)
    images = images.float()
    for factor in (0.6, 1.0, 1.4):
        reference = TF.adjust_saturation(images / 255, factor) * 255
        got = recolour(images, colour_matrix(0.0, factor).expand(3, 3, 3))
        torch.testing.assert_close(got, reference, atol=0.05, rtol=0)  # luma 0.299 vs 0.2989
    mid = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 100 + 80
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213],
                        [0.2115, -0.5227, 0.3112]])
    for turns in (0.05, -0.1):
        turned = recolour(mid, colour_matrix(turns, 1.0).expand(2, 3, 3))
        before = torch.einsum("kc,nchw->nkhw", yiq, mid)
        after = torch.einsum("kc,nchw->nkhw", yiq, turned)
        torch.testing.assert_close(after[:, 0], before[:, 0], atol=1e-3, rtol=0)  # luma kept
        angle = torch.atan2(after[:, 2], after[:, 1]) - torch.atan2(before[:, 2], before[:, 1])
        angle = torch.remainder(angle + math.pi, 2 * math.pi) - math.pi
        torch.testing.assert_close(angle, torch.full_like(angle, 2 * math.pi * turns),
                                   atol=1e-3, rtol=0)
    grey = torch.full((1, 3, 4, 4), 77.0)
    torch.testing.assert_close(recolour(grey, colour_matrix(0.3, 1.5)[None]), grey)


def test_hue_and_saturation_draws_stay_in_range():
    images = torch.zeros(200, 3, 2, 2, dtype=torch.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 150, 100, 100  # a reddish skin tone
    masks = torch.zeros(200, 1, 2, 2, dtype=torch.uint8)
    out = BatchAugment(only(hue=0.05), 2, 2)(images, masks, range(200))[0].float()
    yiq = torch.tensor([[0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
    before = torch.einsum("kc,c->k", yiq, images[0, :, 0, 0].float())
    after = torch.einsum("kc,nc->nk", yiq, out[:, :, 0, 0])
    angle = torch.atan2(after[:, 1], after[:, 0]) - torch.atan2(before[1], before[0])
    assert angle.abs().max() <= 2 * math.pi * 0.05 + 0.02  # uint8 rounding
    assert angle.min() < -0.25 and angle.max() > 0.25
    out = BatchAugment(only(saturation=0.5), 2, 2)(images, masks, range(200))[0].float()
    spread = (out[:, 0, 0, 0] - out[:, 1, 0, 0]) / 50  # the factor, on uint8 levels
    assert spread.min() >= 0.5 - 0.03 and spread.max() <= 1.5 + 0.03
    assert spread.min() < 0.6 and spread.max() > 1.4


def test_blur_removes_fine_detail_and_keeps_flat_images():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[..., ::2, :] = 200  # one-pixel stripes both ways
    images[..., :, ::2] = 200
    masks = (torch.rand(4, 1, 32, 32) > 0.5).to(torch.uint8)
    augment = BatchAugment(only(blur_p=1.0, blur_sigma=1.5), 32, 32)
    drawn = augment.draw(range(8))
    out, out_masks = augment.apply(images, masks, {k: v[:4] for k, v in drawn.items()})

    def fine(values: torch.Tensor) -> torch.Tensor:
        values = values.float()
        return ((values.diff(dim=-1) ** 2).mean((1, 2, 3))
                + (values.diff(dim=-2) ** 2).mean((1, 2, 3)))

    # sigma from [1.5 / 4, 1.5]: even the lightest blur takes a fifth of the finest detail
    assert (fine(out) < 0.85 * fine(images)).all() and (fine(out) < 0.1 * fine(images)).any()
    assert torch.equal(out_masks, masks)
    for i in range(4):  # the drawn separable kernel, borders replicated
        weights = drawn["blur_weights"][i]
        radius = len(weights) // 2
        padded = torch.nn.functional.pad(images[i:i + 1].float(), (radius,) * 4, mode="replicate")
        kernel = (weights[:, None] * weights[None]).expand(3, 1, -1, -1)
        reference = torch.nn.functional.conv2d(padded, kernel, groups=3)[0]
        assert (out[i].float() - reference).abs().max() <= 0.5 + 1e-3
    grey, grey_masks = flat(4, 32, 131)
    assert torch.equal(augment(grey, grey_masks, range(4))[0], grey)
    taps = gaussian_taps(1.0, 3)
    assert taps.shape == (7,) and abs(float(taps.sum()) - 1) < 1e-6 and taps.argmax() == 3
    assert torch.equal(taps, taps.flip(0))  # the blur sums the taps k and -k first


def test_noise_has_the_drawn_spread_and_leaves_masks():
    images, masks = flat(40, 48)
    augment = BatchAugment(only(noise=10.0), 48, 48)
    drawn = augment.draw(range(40))
    out, out_masks = augment.apply(images, masks, drawn)
    measured = (out.float() - 128).std((1, 2, 3))
    expected = drawn["noise_std"].abs()
    assert expected.max() <= 10 and expected.min() >= 0
    assert ((measured - expected).abs() <= 0.05 * expected + 0.3).all()  # uint8 rounding
    assert expected.max() > 9 and (drawn["noise_std"] < 0).any() and (drawn["noise_std"] > 0).any()
    assert torch.equal(out_masks, masks)
    assert not torch.equal(out[0], out[1])


def test_vignette_darkens_the_border_only():
    images, masks = flat(64, 64, 200)
    out, out_masks = BatchAugment(only(vignette_p=0.5), 64, 64)(images, masks, range(64))
    assert torch.equal(out_masks, masks)
    assert (out <= 200).all() and (out[..., 24:40, 24:40] == 200).all()  # the middle untouched
    darkened = (out < 200).flatten(1).any(1)
    assert 0.3 < darkened.float().mean() < 0.7  # p = 0.5
    corners = out[darkened][..., 0, 0]
    assert (corners == 0).any() and (corners < 100).float().mean() > 0.5


def test_hair_draws_a_few_thin_dark_lines_on_the_image_only():
    size = 96
    images, masks = flat(16, size, 220)
    masks[..., 30:60, 30:60] = 1
    augment = BatchAugment(only(hair_p=1.0), size, size)
    drawn = augment.draw(range(16))
    out, out_masks = augment.apply(images, masks, drawn)
    assert torch.equal(out_masks, masks) and (out <= 220).all()
    covered = (out < 220).any(1).flatten(1).float().mean(1)
    assert (covered > 0).all() and (covered < 0.15).all()  # thin
    darkest = out.amin((1, 2, 3)).float()  # a line's middle: below 1 px wide at 96 px
    assert darkest.max() < 120 and darkest.median() < 100
    lines = drawn["hair_lines"]
    counts = (lines[..., 5] > 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= HAIRS


def test_zoom_keeps_masks_binary_and_on_the_lesion():
    images, masks = discs()
    augment = BatchAugment(only(scale=0.4), 96, 96)
    drawn = augment.draw(range(6))
    out, out_masks = augment.apply(images, masks, drawn)
    assert set(out_masks.unique().tolist()) <= {0, 1}
    for image, mask, before, zoom in zip(out, out_masks, masks, drawn["zoom"], strict=True):
        colour = torch.tensor([200, 40, 40]).view(3, 1, 1)
        lesion = ((image.int() - colour).abs() <= 12).all(0)
        assert (lesion == mask[0].bool()).float().mean() > 0.98
        scale = 1 / float(zoom[0])
        assert 0.6 <= scale <= 1.4
        area = mask.sum() / before.sum()  # the lesion's area grows with the square of the scale
        if mask[0, [0, -1]].sum() + mask[0, :, [0, -1]].sum() == 0:  # not cut by the border
            assert abs(float(area) - scale ** 2) < 0.1 * scale ** 2
    scales = 1 / drawn["zoom"][:, 0]
    assert (scales < 0.9).any() and (scales > 1).any()
    for image, scale in zip(out, scales.tolist(), strict=True):
        black = bool((image.amax(0) == 0).any())  # the gradient never is
        assert black if scale < 0.9 else not (black and scale > 1)  # out: 0 as the letterbox


def test_zoom_with_elastic_moves_image_and_mask_together():
    images, masks = discs()
    augment = BatchAugment(only(scale=0.3, elastic_p=1.0, elastic_alpha=6.0,
                                elastic_sigma=24.0), 96, 96)
    out, out_masks = augment(images, masks, range(10, 16))
    assert set(out_masks.unique().tolist()) <= {0, 1}
    colour = torch.tensor([200, 40, 40]).view(3, 1, 1)
    for image, mask, before in zip(out, out_masks, masks, strict=True):
        lesion = ((image.int() - colour).abs() <= 12).all(0)
        assert (lesion == mask[0].bool()).float().mean() > 0.97
        assert not torch.equal(mask, before)


@pytest.mark.parametrize("size", [35, 48, 160])
def test_every_path_gives_the_same_bits_with_every_option_on(size):
    """Only the drawn samples (the CPU, a few at a time at 160 px) or every sample and
    `torch.where` (a GPU): the same batch, odd sizes included."""
    augment = BatchAugment(AugmentConfig(**(OLD | NEW)), size, size)
    for n in (1, 3, 8):
        for start in (0, 40):
            images, masks = batch(n, size, seed=start + n)
            drawn = augment.draw(range(start, start + n))
            indexed = augment.apply(images, masks, drawn, branchless=False)
            branchless = augment.apply(images, masks, drawn, branchless=True)
            assert torch.equal(indexed[0], branchless[0])
            assert torch.equal(indexed[1], branchless[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_sample_is_augmented_the_same_in_any_batch_with_every_option_on(threads):
    augment = BatchAugment(AugmentConfig(**(OLD | NEW)), 37, 37)
    images, masks = batch(8, 37, seed=1)
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


def test_draws_are_keyed_by_seed():
    """A sample's parameters depend on its seed (from seed, epoch, index) alone: the same in
    any list of seeds, different for another seed; the same batch twice."""
    augment = BatchAugment(AugmentConfig(**(OLD | NEW)), 40, 40)
    many = augment.draw(list(range(300)))
    again = augment.draw([299, 7])
    for name, values in again.items():
        assert torch.equal(values[0], many[name][299]) and torch.equal(values[1], many[name][7])
    for name in ("zoom", "colour", "gamma_lut", "noise_std", "hair_lines"):
        assert not torch.equal(many[name][0], many[name][1]), name
    for name in ("blur", "vignette", "hair"):
        assert abs(many[name].float().mean() - 0.5) < 0.1
    images, masks = batch(4, 40)
    first, second = augment(images, masks, [5, 6, 7, 8]), augment(images, masks, [5, 6, 7, 8])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
