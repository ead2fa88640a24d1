"""Data pipeline speed: `prepare` against a plain full decode + resize, and the training loader.

    python bench/bench_data.py            # real set from $DERMASEG_REAL or ../shared/data/derm-real

Prepare: images per second on the real set and on 8 synthetic 6000x4000 JPEGs (ISIC's largest
size), each against a plain Pillow open + full decode + resize of the same files in the same run
(no draft, no writing). Loader: batches per second the training pipeline (PreparedDataset +
augmentation) delivers, batch 8 at 256 px, with 0 and 2 DataLoader workers, plus the cost of each
transform per sample.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from common import median_time, report
from dermaseg.config import AugmentConfig
from dermaseg.data.check import default_workers
from dermaseg.data.dataset import PreparedDataset
from dermaseg.data.device_augment import DeviceAugment
from dermaseg.data.discover import discover
from dermaseg.data.geometry import Letterbox
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.data.transforms import BrightnessContrast, SegmentationTransform

DEFAULT_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "derm-real"
REAL = Path(os.environ.get("DERMASEG_REAL", DEFAULT_REAL))
SIZE = 512


def plain_pair(paths: tuple[Path, Path]) -> int:
    """The naive way: full decode of image and mask, then resize to the letterboxed size."""
    with Image.open(paths[0]) as image, Image.open(paths[1]) as mask:
        image = image.convert("RGB")
        box = Letterbox.fit(image.height, image.width, SIZE)
        image.resize((box.new_width, box.new_height), Image.Resampling.BILINEAR)
        mask.load()
        mask.resize((box.new_width, box.new_height), Image.Resampling.NEAREST)
    return 1


def time_plain(folder: Path, workers: int) -> float:
    pairs = [(p.image, p.mask) for p in discover(folder).pairs]
    start = time.perf_counter()
    if workers <= 1:
        for pair in pairs:
            plain_pair(pair)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(plain_pair, pairs))
    return time.perf_counter() - start


def prepare_rows(name: str, folder: Path, workers: int) -> list[dict]:
    count = len(discover(folder).pairs)
    rows = []
    for jobs in sorted({1, workers}):
        plain = time_plain(folder, jobs)
        with tempfile.TemporaryDirectory() as out:
            manifest = prepare_dataset(folder, out, size=SIZE, workers=jobs, progress=False)
        seconds = manifest["run"]["seconds"]
        rows.append({"data": name, "pairs": count, "workers": jobs,
                     "plain decode+resize img/s": count / plain,
                     "prepare img/s": count / seconds, "speed-up": plain / seconds})
    return rows


def loader_rows(prepared: Path) -> list[dict]:
    transform = SegmentationTransform(augment=AugmentConfig(), as_uint8=True)  # as in training
    data = PreparedDataset(prepared, "train", image_size=256, transform=transform)
    rows = []
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=8, shuffle=True, num_workers=workers,
                            drop_last=True, persistent_workers=workers > 0)
        batches, start = 0, None
        for _ in range(3):
            for _batch in loader:
                if start is None:  # the first batch pays for starting the workers
                    start = time.perf_counter()
                    continue
                batches += 1
        rows.append({"pipeline": f"PreparedDataset + augment (uint8 out), batch 8 @ 256 px, "
                                 f"{workers} workers",
                     "batches/s": batches / (time.perf_counter() - start)})
    return rows


def transform_rows() -> list[dict]:
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 80:200] = 1
    off = dict(hflip=0.0, vflip=0.0, brightness=0.0, contrast=0.0, elastic_p=0.0)
    cases = {
        "normalise only": SegmentationTransform(),
        "flips + brightness/contrast, uint8 out": SegmentationTransform(
            augment=AugmentConfig(elastic_p=0.0), as_uint8=True),
        "default augment (elastic p=0.25), uint8 out (the training loader)":
            SegmentationTransform(augment=AugmentConfig(), as_uint8=True),
        "elastic p=1 (dermaseg control grid)": SegmentationTransform(
            augment=AugmentConfig(**(off | {"elastic_p": 1.0}))),
    }
    rows = [{"pipeline": f"transform per sample @ 256 px: {name}",
             "ms": 1000 * median_time(lambda t=t: t(image, mask), repeats=30)}
            for name, t in cases.items()]
    pair = (tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(mask)[None]))
    ours = BrightnessContrast(brightness=0.2, contrast=0.2)
    jitter = v2.ColorJitter(brightness=0.2, contrast=0.2)
    elastic = v2.ElasticTransform(alpha=50.0, sigma=5.0)  # torchvision's defaults
    for name, fn, repeats in (("dermaseg BrightnessContrast (lookup table)", ours, 30),
                              ("torchvision v2.ColorJitter(brightness, contrast)", jitter, 30),
                              ("torchvision v2.ElasticTransform", elastic, 10)):
        rows.append({"pipeline": f"transform per sample @ 256 px: {name}",
                     "ms": 1000 * median_time(lambda f=fn: f(*pair), repeats=repeats)})
    return rows


def placement_rows(size: int = 512, batch: int = 8) -> list[dict]:
    """CPU time per batch of the GPU recipe (8 @ 512 px) on each side of `data.augment_on`:
    what the loader workers do, and the batched device augmentation (timed here on the CPU;
    a GPU runs it far faster)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[128:384, 160:400] = 1
    in_workers = SegmentationTransform(augment=AugmentConfig(), as_uint8=True)
    gather_only = SegmentationTransform(as_uint8=True)
    device = DeviceAugment(AugmentConfig(), size, size)
    images = torch.from_numpy(np.stack([image] * batch)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([mask] * batch))[:, None]
    params = device.draw(list(range(batch)))
    cases = {
        "loader side, augment_on loader (augment in the workers)":
            lambda: [in_workers(image, mask) for _ in range(batch)],
        "loader side, augment_on device (the workers only convert)":
            lambda: [gather_only(image, mask) for _ in range(batch)],
        "device side, augment_on device: draw the parameters":
            lambda: device.draw(list(range(batch))),
        "device side, augment_on device: apply, timed on this CPU":
            lambda: device.apply(images, masks, params),
    }
    return [{"pipeline": f"per batch {batch} @ {size} px: {name}",
             "ms": 1000 * median_time(fn, repeats=10)} for name, fn in cases.items()]


def model_step_row(threads: int) -> dict:
    """The consumer: one training step of a small DeepLab-v3 (MobileNetV3) on a batch 8 @ 256."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.set_num_threads(threads)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1)
    optimiser = torch.optim.Adam(model.parameters())
    images, masks = torch.randn(8, 3, 256, 256), torch.rand(8, 1, 256, 256).round()

    def step() -> None:
        optimiser.zero_grad()
        logits = model(images)["out"]
        torch.nn.functional.binary_cross_entropy_with_logits(logits, masks).backward()
        optimiser.step()

    seconds = median_time(step, repeats=1, warmup=1)
    return {"pipeline": f"consumer: DeepLabV3-MobileNetV3 train step, batch 8 @ 256 px, "
                        f"{threads} threads", "batches/s": 1 / seconds}


def make_big(folder: Path, count: int = 8) -> None:
    """`count` distinct 6000x4000 JPEG pairs: one synthetic pair (slow to draw at this size)
    flipped and tinted into variants, each encoded as its own JPEG + PNG."""
    synth_dataset(1, folder / "base", seed=0, options=SynthOptions(size=(6000, 4000)),
                  progress=False)
    image = np.asarray(Image.open(folder / "base" / "synth_0001.jpg"))
    mask = np.asarray(Image.open(folder / "base" / "synth_0001_segmentation.png"))
    for index in range(count):
        flip = [slice(None, None, -1) if index & bit else slice(None) for bit in (1, 2)]
        tint = np.array([1.0, 1.0 - 0.05 * (index // 4), 1.0])
        variant = np.clip(image[flip[0], flip[1]] * tint, 0, 255).astype(np.uint8)
        Image.fromarray(variant).save(folder / f"big_{index}.jpg", quality=92)
        Image.fromarray(mask[flip[0], flip[1]]).save(folder / f"big_{index}_segmentation.png")
    shutil.rmtree(folder / "base")


def main() -> None:
    workers = default_workers()
    rows, notes = [], [f"prepare at {SIZE} px; plain = Pillow open + full decode + resize, "
                       "no draft, nothing written; same process pool size"]
    with tempfile.TemporaryDirectory() as work:
        big = Path(work) / "big"
        start = time.perf_counter()
        make_big(big)
        seconds = time.perf_counter() - start
        notes.append(f"8 synthetic 6000x4000 JPEGs generated in {seconds:.0f} s")
        if REAL.is_dir():
            rows += prepare_rows(f"real ({REAL.name})", REAL, workers)
        else:
            notes.append(f"real set not found at {REAL} (set DERMASEG_REAL): skipped")
        rows += prepare_rows("synthetic 6000x4000 JPEG", big, workers)
        report("data_prepare", "dermaseg data prepare: images per second", rows, notes)
        source = REAL if REAL.is_dir() else big
        prepared = Path(work) / "prepared"
        prepare_dataset(source, prepared, size=256, progress=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in DataLoader workers; avoids thread-spin under load
        loader = loader_rows(prepared) + transform_rows() + placement_rows()
    loader.append(model_step_row(threads))
    report("data_loader", "Training data pipeline (CPU)", loader,
           [f"data from {source.name}, prepared at 256 px; loader and transforms timed with "
            "1 torch thread (DataLoader workers use 1)",
            "the loader keeps up when its batches/s exceed the consumer's"])


if __name__ == "__main__":
    sys.exit(main())
