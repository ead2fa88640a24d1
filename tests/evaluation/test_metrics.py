"""Metrics: golden values, equality with the official ISIC scorer, torchmetrics and DDP."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from dermaseg.errors import DermasegError
from dermaseg.evaluation.metrics import (
    METRIC_NAMES,
    Confusion,
    confusion,
    image_metrics,
    pooled_metrics,
    summarize,
)
from dermaseg.train.torch_metrics import SegmentationMetrics

isic_segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")
isic_load = pytest.importorskip("isic_challenge_scoring.load_image")


def m(rows) -> np.ndarray:
    """A uint8 0/255 mask from nested 0/1 lists."""
    return np.asarray(rows, dtype=np.uint8) * 255


def all_of(value: float, **overrides) -> dict:
    return {name: overrides.get(name, value) for name in METRIC_NAMES}


GOLDEN = {  # name: (pred, truth, expected metrics)
    "partial": (
        m([[1, 0, 1], [0, 0, 0]]),
        m([[1, 1, 0], [0, 0, 0]]),
        {
            "accuracy": 4 / 6,
            "sensitivity": 0.5,
            "specificity": 0.75,
            "precision": 0.5,
            "dice": 0.5,
            "jaccard": 1 / 3,
            "threshold_jaccard": 0.0,
        },
    ),
    "above_0.65": (
        m([[1, 1, 1, 1], [0, 0, 0, 0]]),
        m([[1, 1, 1, 0], [0, 0, 0, 0]]),
        {
            "accuracy": 7 / 8,
            "sensitivity": 1.0,
            "specificity": 0.8,
            "precision": 0.75,
            "dice": 6 / 7,
            "jaccard": 0.75,
            "threshold_jaccard": 0.75,
        },
    ),
    "both_empty": (m([[0, 0], [0, 0]]), m([[0, 0], [0, 0]]), all_of(1.0)),
    "empty_truth": (
        m([[1, 0], [0, 0]]),
        m([[0, 0], [0, 0]]),
        all_of(0.0, accuracy=0.75, sensitivity=1.0, specificity=0.75),
    ),
    "empty_prediction": (
        m([[0, 0], [0, 0]]),
        m([[0, 1], [0, 0]]),
        all_of(0.0, accuracy=0.75, specificity=1.0, precision=1.0),
    ),
    "all_lesion_perfect": (m([[1, 1], [1, 1]]), m([[1, 1], [1, 1]]), all_of(1.0)),
    "all_lesion_missed": (
        m([[0, 0], [0, 0]]),
        m([[1, 1], [1, 1]]),
        all_of(0.0, specificity=1.0, precision=1.0),
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_metrics(name):
    pred, truth, want = GOLDEN[name]
    got = image_metrics(pred, truth)
    assert got == pytest.approx(want, abs=1e-12)
    torch_got = SegmentationMetrics()(
        torch.from_numpy(np.where(pred > 0, 5.0, -5.0))[None, None],
        torch.from_numpy(truth > 0).float()[None, None],
    )
    for key in METRIC_NAMES:
        assert torch_got[key].item() == pytest.approx(want[key], abs=1e-12), key


def test_threshold_is_above_128_like_the_scorer():
    truth = np.array([[128, 129, 255, 0]], dtype=np.uint8)
    assert confusion(truth, truth) == Confusion(tp=2, fp=0, fn=0, tn=2)
    ones = np.array([[1, 1]], dtype=np.uint8)  # a 0/1 mask is all background, as in the scorer
    assert confusion(ones, ones) == Confusion(0, 0, 0, 2)
    assert confusion(ones.astype(bool), ones.astype(bool)) == Confusion(2, 0, 0, 0)
    with pytest.raises(DermasegError, match="dtype"):
        confusion(ones.astype(float), ones)
    with pytest.raises(DermasegError, match="shape"):
        confusion(ones, np.zeros((2, 2), np.uint8))


def test_summaries():
    rows = [image_metrics(p, t) for p, t, _ in GOLDEN.values()]
    overall = summarize(rows)
    for key in METRIC_NAMES:
        assert overall[key] == pytest.approx(np.mean([r[key] for r in rows]), abs=1e-15)
    assert summarize({str(i): r for i, r in enumerate(rows)}) == overall
    pooled = pooled_metrics([Confusion(1, 1, 1, 3), Confusion(3, 0, 0, 1)])
    assert pooled["dice"] == pytest.approx(8 / 10)
    assert pooled["jaccard"] == pytest.approx(4 / 6)
    with pytest.raises(DermasegError):
        summarize([])


def random_blobs(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """A uint8 0/255 mask: a union of random ellipses, with a soft (grey) rim on some."""
    yy, xx = np.mgrid[:height, :width]
    level = np.zeros((height, width))
    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(2, height / 2), rng.uniform(2, width / 2)
        level = np.maximum(level, 1.5 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2)
    return (np.clip(level, 0, 1) * 255).round().astype(np.uint8)


def make_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, truth) pairs: random, perturbed, empty, perfect, full, varied sizes."""
    cases = []
    for i in range(14):
        h, w = int(rng.integers(9, 90)), int(rng.integers(9, 90))
        truth = random_blobs(rng, h, w, int(rng.integers(1, 4)))
        if i % 3 == 0:  # a near miss around the 0.65 Jaccard threshold
            shift = int(rng.integers(1, 6))
            pred = np.roll(truth, shift, axis=int(rng.integers(0, 2)))
        else:
            pred = random_blobs(rng, h, w, int(rng.integers(1, 4)))
        cases.append((pred, truth))
    empty = np.zeros((31, 47), np.uint8)
    full = np.full((23, 17), 255, np.uint8)
    blob = random_blobs(rng, 40, 33, 2)
    cases += [
        (blob, blob),
        (empty, empty),
        (blob, np.zeros_like(blob)),
        (np.zeros_like(blob), blob),
        (full, full),
        (empty[:23, :17], full),
    ]
    return cases


def write_cases(cases, truth_dir: Path, pred_dir: Path) -> list[str]:
    truth_dir.mkdir()
    pred_dir.mkdir()
    ids = []
    for i, (pred, truth) in enumerate(cases):
        image_id = f"ISIC_{i + 1:07d}"
        Image.fromarray(truth, mode="L").save(truth_dir / f"{image_id}_segmentation.png")
        Image.fromarray(pred, mode="L").save(pred_dir / f"{image_id}_segmentation.png")
        ids.append(image_id)
    return ids


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def test_equal_to_official_scorer(tmp_path):
    rng = np.random.default_rng(2018)
    ids = write_cases(make_cases(rng), tmp_path / "truth", tmp_path / "pred")
    per_image = {}
    for image_id in ids:
        pred = read_mask(tmp_path / "pred" / f"{image_id}_segmentation.png")
        truth = read_mask(tmp_path / "truth" / f"{image_id}_segmentation.png")
        per_image[image_id] = image_metrics(pred, truth)
    jaccards = [row["jaccard"] for row in per_image.values()]
    assert min(jaccards) == 0 and max(jaccards) == 1
    assert any(0 < j < 0.65 for j in jaccards) and any(0.65 <= j < 1 for j in jaccards)

    score_cls = isic_segmentation.SegmentationScore
    pairs = isic_load.iter_image_pairs(tmp_path / "truth", tmp_path / "pred")
    for pair in pairs:
        official = score_cls([pair]).macro_average  # one image: its per-image values
        ours = per_image[pair.image_id]
        for key, value in official.items():
            assert ours[key] == pytest.approx(value, abs=1e-9), (pair.image_id, key)
    official = score_cls.from_dir(tmp_path / "truth", tmp_path / "pred")
    overall = summarize(per_image)
    assert len(official.macro_average) == 6
    for key, value in official.macro_average.items():
        assert overall[key] == pytest.approx(value, abs=1e-9), key
    assert overall["threshold_jaccard"] == pytest.approx(official.overall, abs=1e-9)


def as_batches(cases, sizes):
    """Torch (logits, target) batches of equal-sized images, split into the given sizes."""
    logits = torch.stack([torch.from_numpy(np.where(p > 128, 4.0, -4.0)) for p, _ in cases])
    target = torch.stack([torch.from_numpy((t > 128).astype(np.float32)) for _, t in cases])
    start = 0
    for size in sizes:
        yield logits[start : start + size, None], target[start : start + size, None]
        start += size


def same_size_cases(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = [(random_blobs(rng, 24, 20, 2), random_blobs(rng, 24, 20, 2)) for _ in range(n - 3)]
    empty, full = np.zeros((24, 20), np.uint8), np.full((24, 20), 255, np.uint8)
    return cases + [(empty, empty), (full, full), (empty, cases[0][1])]


def test_torchmetrics_matches_numpy_across_batches():
    cases = same_size_cases(7, 12)
    want = summarize([image_metrics(p, t) for p, t in cases])
    metric = SegmentationMetrics(threshold=0.5)
    for logits, target in as_batches(cases, [5, 1, 6]):
        metric.update(logits, target[:, 0])  # (N, H, W) target works too
    got = metric.compute()
    for key in METRIC_NAMES:
        assert got[key].item() == pytest.approx(want[key], abs=1e-12), key
    pooled = pooled_metrics(confusion(p, t) for p, t in cases)
    assert got["pooled_dice"].item() == pytest.approx(pooled["dice"], abs=1e-12)
    assert got["pooled_jaccard"].item() == pytest.approx(pooled["jaccard"], abs=1e-12)
    metric.reset()
    assert metric.images.item() == 0


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cases = same_size_cases(11, 10)
        mine = cases[:7] if rank == 0 else cases[7:]  # unequal shares
        metric = SegmentationMetrics()
        for logits, target in as_batches(mine, [len(mine)]):
            metric.update(logits, target)
        result = {k: v.item() for k, v in metric.compute().items()}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchmetrics_sync_across_ddp_processes(tmp_path):
    """Two real gloo processes with unequal shares agree with one pass over all images."""
    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    want = summarize([image_metrics(p, t) for p, t in same_size_cases(11, 10)])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key in METRIC_NAMES:
            assert got[key] == pytest.approx(want[key], abs=1e-12), (rank, key)
