"""Post-processing on drawn shapes: two blobs, specks, a ring, and a real dense CRF."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage

from dermaseg.errors import DermasegError
from dermaseg.evaluation.metrics import image_metrics
from dermaseg.infer.postprocess import (
    PostprocessConfig,
    crf_refine,
    fill_holes,
    keep_largest_component,
    postprocess,
    remove_small_objects,
)

YY, XX = np.mgrid[:80, :100]


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    return (XX - cx) ** 2 + (YY - cy) ** 2 <= r * r


def two_blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    big, small = disc(30, 40, 15), disc(80, 20, 5)
    return big | small, big, small


def test_keep_largest_component():
    both, big, _ = two_blobs()
    assert np.array_equal(keep_largest_component(both), big)
    assert np.array_equal(keep_largest_component(both.astype(np.uint8) * 255), big)
    assert not keep_largest_component(np.zeros((5, 5), bool)).any()


def test_connectivity_decides_what_touches():
    diagonal = np.zeros((6, 6), bool)
    diagonal[1:3, 1:3] = True
    diagonal[3, 3] = True  # touches the square only at a corner
    assert keep_largest_component(diagonal, connectivity=8).sum() == 5
    assert keep_largest_component(diagonal, connectivity=4).sum() == 4
    with pytest.raises(DermasegError, match="connectivity"):
        keep_largest_component(diagonal, connectivity=6)


def test_remove_specks_under_area():
    both, big, small = two_blobs()
    small_area = int(small.sum())  # 81 pixels
    assert np.array_equal(remove_small_objects(both, small_area + 1), big)
    assert np.array_equal(remove_small_objects(both, small_area), both)
    assert np.array_equal(remove_small_objects(both, 0), both)


def test_fill_holes_of_a_ring():
    ring = disc(50, 40, 20) & ~disc(50, 40, 8)
    assert np.array_equal(fill_holes(ring), disc(50, 40, 20))
    # a notch open to the image border is not a hole
    notch = np.ones((10, 10), bool)
    notch[0:5, 4:6] = False
    assert np.array_equal(fill_holes(notch), notch)


def test_postprocess_runs_the_chosen_steps_in_order():
    both, big, _ = two_blobs()
    holed = both & ~disc(30, 40, 4)
    assert np.array_equal(postprocess(holed), holed)  # nothing switched on
    cfg = PostprocessConfig(largest_component=True, fill_holes=True)
    assert np.array_equal(postprocess(holed, config=cfg), big)
    assert np.array_equal(
        postprocess(holed, config=PostprocessConfig(min_area=100)), big & ~disc(30, 40, 4)
    )
    with pytest.raises(DermasegError, match="needs the probability map"):
        postprocess(holed, config=PostprocessConfig(crf=True))
    with pytest.raises(DermasegError, match="shape"):
        postprocess(np.zeros((2, 3, 3)))


def crf_scene():
    """A dark lesion on light skin, and a blurred, shifted, noisy probability map of it."""
    rng = np.random.default_rng(0)
    truth = disc(48, 40, 22)
    colour = np.where(truth[..., None], [90, 50, 30], [220, 180, 160])
    image = (colour + rng.normal(0, 8, colour.shape)).clip(0, 255).astype(np.uint8)
    prob = ndimage.gaussian_filter(disc(53, 36, 26).astype(float), 6) * 0.8 + 0.1
    prob = np.clip(prob + rng.normal(0, 0.1, prob.shape), 0, 1)
    return truth, image, prob


def test_dense_crf_snaps_to_the_lesion():
    pytest.importorskip("pydensecrf.densecrf")
    truth, image, prob = crf_scene()
    image.flags.writeable = False  # as np.asarray(PIL image) gives
    before = image_metrics(prob > 0.5, truth)["dice"]
    refined = postprocess(prob > 0.5, prob, image, PostprocessConfig(crf=True))
    after = image_metrics(refined, truth)["dice"]
    assert before < 0.9 and after > 0.97
    with pytest.raises(DermasegError, match="uint8"):
        crf_refine(prob, image.astype(float), PostprocessConfig())


def test_dense_crf_on_a_large_image_runs_at_the_capped_side():
    """The CRF of a 24 Mpx image took 36 s and 5 GB at full size: it now runs at
    crf_max_side and its result is scaled back to the image's size."""
    pytest.importorskip("pydensecrf.densecrf")
    truth, image, prob = crf_scene()
    factor = 16  # the scene at 16x its size, its texture kept by nearest-neighbour scaling
    big = [np.kron(a, np.ones((factor, factor) + (1,) * (a.ndim - 2), a.dtype))
           for a in (truth, image, prob)]
    assert image_metrics(big[2] > 0.5, big[0])["dice"] < 0.9
    for side in (160, 400):  # the kernels are in the working pixels: the scene's own scale
        config = PostprocessConfig(crf=True, crf_max_side=side)
        refined = postprocess(big[2] > 0.5, big[2], big[1], config)
        assert refined.shape == (factor * 80, factor * 100)
        assert image_metrics(refined, big[0])["dice"] > 0.97, side


def test_missing_crf_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    truth, image, prob = crf_scene()
    with pytest.raises(DermasegError, match=r"pip install dermaseg\[crf\]"):
        postprocess(truth, prob, image, PostprocessConfig(crf=True))
