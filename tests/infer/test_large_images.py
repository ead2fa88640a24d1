"""The faster large-image paths of predict and serve give the straightforward results.

Each fast path (bounding-box cropping, labelling instead of iterated dilation, reduced JPEG
decoding, in-place float conversion) is compared with the plain computation it replaces.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dermaseg.data.prepare import prepare_dataset
from dermaseg.fileio import read_rgb, read_rgb_reduced
from dermaseg.geometry import mask_box
from dermaseg.infer import postprocess as pp
from dermaseg.infer.batch import probability_png
from dermaseg.infer.measure import contour_polygon, measure_in_box, measure_lesion
from dermaseg.infer.overlay import draw_overlay
from dermaseg.serve.work import mask_png


def _masks(count: int = 300, seed: int = 0):
    """Random masks: specks, blobs with holes, lesions touching the border, empty and full."""
    rng = np.random.default_rng(seed)
    yield np.zeros((7, 9), bool)
    yield np.ones((7, 9), bool)
    for _ in range(count):
        height, width = rng.integers(1, 40, 2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.8)
        if rng.random() < 0.5:
            mask = ndimage.binary_opening(mask) | ndimage.binary_closing(mask)
        yield mask


def _old_label(mask, connectivity):
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, count = ndimage.label(mask, structure=structure)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)[1:]


def test_mask_box_is_the_bounding_box_with_margin():
    mask = np.zeros((10, 12), bool)
    mask[3:5, 4:9] = True
    assert mask_box(mask) == (slice(3, 5), slice(4, 9))
    assert mask_box(mask, margin=4) == (slice(0, 9), slice(0, 12))
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_fill_holes_equals_scipy():
    for mask in _masks():
        np.testing.assert_array_equal(pp.fill_holes(mask), ndimage.binary_fill_holes(mask))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_equal_full_size_labelling(connectivity):
    for mask in _masks(seed=connectivity):
        labels, sizes = _old_label(mask, connectivity)
        largest = labels == int(np.argmax(sizes)) + 1 if sizes.size else mask
        np.testing.assert_array_equal(pp.keep_largest_component(mask, connectivity), largest)
        small = np.concatenate([[False], sizes >= 4])[labels]
        np.testing.assert_array_equal(pp.remove_small_objects(mask, 4, connectivity), small)


def test_keep_largest_tie_keeps_the_first_in_raster_order():
    mask = np.zeros((20, 20), bool)
    mask[12:15, 2:5] = True  # lower, left
    mask[5:8, 14:17] = True  # upper, right: first in raster order, same size
    np.testing.assert_array_equal(pp.keep_largest_component(mask)[5:8, 14:17], True)
    assert pp.keep_largest_component(mask).sum() == 9


def test_overlay_draws_the_traced_contour_on_the_border():
    """The overlay is the measurements' contour, drawn across the lesion's border: every
    coloured pixel lies within the line width of the border, and each region is outlined."""
    rng = np.random.default_rng(1)
    big = np.zeros((700, 900), bool)  # a line width of 3 pixels
    big[100:400, 200:800] = True
    big[150:200, 300:350] = False  # a hole: outlined too
    for mask in [*_masks(60, seed=2), big]:
        image = rng.integers(0, 200, (*mask.shape, 3), dtype=np.uint8)
        drawn = np.all(draw_overlay(image, [(mask, (255, 40, 40))]) == (255, 40, 40), axis=-1)
        border = mask ^ ndimage.binary_erosion(mask, border_value=0)
        width = max(1, round(max(mask.shape) / 300))
        near = ndimage.binary_dilation(border, iterations=width + 1)
        assert not (drawn & ~near).any()
        if mask.any():
            labels, count = ndimage.label(border, structure=np.ones((3, 3)))
            assert len(set(np.unique(labels[drawn])) - {0}) == count
        empty = draw_overlay(image, [(np.zeros_like(mask), (255, 40, 40))])
        np.testing.assert_array_equal(empty, image)


def _close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
    else:
        assert a == b


def test_measurements_in_box_equal_the_whole_image():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:120, :160]
    shapes = [((yy - 60) ** 2 / 900 + (xx - 90) ** 2 / 1600) < 1, yy < xx / 3,
              np.zeros((120, 160), bool)]
    shapes[0][55:60, 85:95] = False  # a hole
    for mask in shapes:
        image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        for pixel in (None, 0.01):
            expected = measure_lesion(mask, image, pixel)
            got = measure_in_box(mask, image, pixel)
            _close(got, expected)
            assert json.dumps(got)  # plain Python numbers
        _close(measure_in_box(mask), measure_lesion(mask))


def test_contour_polygon_is_traced_in_the_lesion_box():
    """The polygon traced inside the bounding box is the one traced on the whole mask."""
    from dermaseg.infer.measure import contours

    def area(line):
        x, y = line[:, 0], line[:, 1]
        return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2

    for mask in list(_masks(40, seed=4)):
        lines = contours(mask)
        if not lines:
            assert contour_polygon(mask) == []
            continue
        whole = max(lines, key=area)[:-1]
        got = np.asarray(contour_polygon(mask, max_points=10**6))
        np.testing.assert_allclose(got, whole, atol=0.006)


def test_probability_png_equals_round_clip():
    prob = np.random.default_rng(5).uniform(-0.01, 1.01, (50, 70)).astype(np.float32)
    prob[0, :4] = [0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0]  # halves round to even
    expected = np.round(prob * 255).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(probability_png(prob), expected)


def test_server_mask_png_is_unchanged():
    mask = np.random.default_rng(6).random((30, 40)) < 0.3
    decoded = np.asarray(Image.open(io.BytesIO(mask_png(mask))))
    np.testing.assert_array_equal(decoded, np.where(mask, 255, 0).astype(np.uint8))


def _jpeg(path, width, height, orientation=1):
    rng = np.random.default_rng(width)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=92, exif=exif)


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_gives_the_network_input_of_prepare(tmp_path, orientation):
    """predict and serve feed the network exactly the tensor training feeds it for the same
    image: `data prepare`'s pixels, normalised by the one Preprocessing."""
    import torch

    from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD
    from dermaseg.preprocessing import Normalisation, Preprocessing

    source = tmp_path / "src"
    source.mkdir()
    _jpeg(source / "big.jpg", 900, 600, orientation)
    shown = (900, 600) if orientation == 1 else (600, 900)
    mask = np.zeros(shown[::-1], np.uint8)
    mask[100:300, 200:400] = 255
    Image.fromarray(mask).save(source / "big_segmentation.png")
    prepare_dataset(source, tmp_path / "prep", size=64, val=0, test=0, progress=False)
    prepared = np.load(tmp_path / "prep" / "images" / "big.npy")
    image, original = read_rgb_reduced(source / "big.jpg", 64)
    assert original == shown[::-1] and image.shape[0] < original[0]  # reduced decode
    preprocessing = Preprocessing(64, Normalisation.of(IMAGENET_MEAN, IMAGENET_STD))
    network_input, box = preprocessing(image, original)
    # what training feeds the network: the prepared array, normalised on the device
    trained_on = preprocessing.normalise_tensor(torch.from_numpy(prepared).permute(2, 0, 1))
    np.testing.assert_array_equal(network_input, trained_on.numpy())
    assert (box.orig_height, box.orig_width) == original


def test_reduced_decode_of_small_or_png_images_is_the_full_decode(tmp_path):
    _jpeg(tmp_path / "small.jpg", 100, 80)
    Image.open(tmp_path / "small.jpg").save(tmp_path / "big.png")
    for name, size in (("small.jpg", 64), ("big.png", 16)):
        image, original = read_rgb_reduced(tmp_path / name, size)
        np.testing.assert_array_equal(image, read_rgb(tmp_path / name))
        assert original == image.shape[:2]
