"""Data pipeline speed: `prepare` against a plain full decode + resize, and the training loader
against the model it feeds.

    python bench/bench_data.py                # real set: $DERMASEG_REAL, ../shared/data/derm-real
    python bench/bench_data.py --loader-only  # only the loader table

Prepare: images per second on the real set and on 8 synthetic 6000x4000 JPEGs (ISIC's largest
size), each against a plain Pillow open + full decode + resize of the same files in the same run
(no draft, no writing). Loader: batches per second of the training DataLoader as `dermaseg
train` builds it, the batched augmentation (`dermaseg.data.augment`) applied to each batch in
its workers: batch 8 at 256 px with 0 and 2 workers, and the cpu_small recipe, against the
training step rate of the cpu_small model (and of a small DeepLab-v3); the cost of each
augmentation step per batch; and the CPU time per batch on each side of `data.augment_on` for
the GPU recipe (8 at 512 px).
"""

from __future__ import annotations

import argparse
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
from torchvision import tv_tensors
from torchvision.transforms import v2

from common import median_time, report
from dermaseg.config import AugmentConfig
from dermaseg.config_io import load_config
from dermaseg.data.augment import BatchAugment
from dermaseg.data.check import default_workers
from dermaseg.data.discover import discover
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.data.transforms import SegmentationTransform
from dermaseg.geometry import Letterbox
from dermaseg.train.datamodule import BatchCollate, SegmentationDataModule

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


def recipe(name: str | None, *overrides: str):
    """A shipped recipe (None: the defaults) with `overrides`, random weights."""
    return load_config(name, ["model.pretrained=null", *overrides])


def loader_rate(config, prepared: Path, epochs: int = 3) -> float:
    """Batches per second of the training DataLoader as `dermaseg train` builds it (the
    augmentation where `config` puts it), over `epochs` epochs after the first batch (which
    pays for starting the workers)."""
    module = SegmentationDataModule(config, prepared)
    module.setup("fit")
    loader = module.train_dataloader()
    batches, start = 0, None
    for epoch in range(epochs):
        module.train_sampler.set_epoch(epoch)
        for _batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            batches += 1
    return batches / (time.perf_counter() - start)


def loader_rows(prepared: Path, prepared_small: Path) -> list[dict]:
    """The training loader, the batched augmentation in its workers: batch 8 at 256 px with
    the default augmentation and 0 or 2 workers, and the cpu_small recipe as it trains."""
    rows = []
    for workers in (0, 2):
        config = recipe(None, "data.image_size=256", "data.batch_size=8",
                        f"data.num_workers={workers}", "data.augment_on=loader")
        rows.append({"pipeline": f"training loader, default augmentation in the loader, batch 8 "
                                 f"@ 256 px, {workers} workers",
                     "batches/s": loader_rate(config, prepared)})
    small = recipe("cpu_small", "data.augment_on=loader")
    rows.append({"pipeline": f"training loader, cpu_small recipe (its augmentation, batch "
                             f"{small.data.batch_size} @ {small.data.image_size} px, "
                             f"{small.data.num_workers} worker)",
                 "batches/s": loader_rate(small, prepared_small)})
    return rows


def sample_batch(size: int, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of real-looking uint8 noise: images N x 3 x S x S, lesion masks N x 1 x S x S."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    masks = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    masks[..., size // 4: 3 * size // 4, size // 3: 3 * size // 4] = 1
    return images, masks


def augment_rows(size: int = 256, batch: int = 8) -> list[dict]:
    """CPU time of the batched augmentation per batch: each step alone (drawn for every
    sample), the default and the cpu_small settings; on the CPU only the drawn samples are
    computed, `branchless` computes every sample (as on a GPU)."""
    images, masks = sample_batch(size, batch)
    off = dict(hflip=0.0, vflip=0.0, brightness=0.0, contrast=0.0, elastic_p=0.0)
    cases = {
        "flips (p=1)": AugmentConfig(**(off | {"hflip": 1.0, "vflip": 1.0})),
        "rotate90 (p=1)": AugmentConfig(**(off | {"rotate90": 1.0})),
        "brightness + contrast": AugmentConfig(**(off | {"brightness": 0.2, "contrast": 0.2})),
        "elastic (p=1)": AugmentConfig(**(off | {"elastic_p": 1.0})),
        "default (elastic p=0.25)": AugmentConfig(),
        "cpu_small (flips, rotate90, brightness/contrast)": recipe("cpu_small").data.augment,
    }
    rows = []
    for name, config in cases.items():
        augment = BatchAugment(config, size, size)
        params = augment.draw(range(batch))
        for branchless in (False, True):
            mode = "every sample + where (as on a GPU)" if branchless else "drawn samples only"
            rows.append({"pipeline": f"augment batch {batch} @ {size} px: {name}, {mode}",
                         "ms": 1000 * median_time(lambda a=augment, p=params, b=branchless:
                                                  a.apply(images, masks, p, branchless=b),
                                                  repeats=20)})
    augment = BatchAugment(AugmentConfig(), size, size)
    rows.append({"pipeline": f"augment batch {batch} @ {size} px: draw the parameters",
                 "ms": 1000 * median_time(lambda: augment.draw(range(batch)), repeats=20)})
    elastic = v2.ElasticTransform(alpha=50.0, sigma=5.0)  # torchvision's defaults
    pairs = [(tv_tensors.Image(image), tv_tensors.Mask(mask)) for image, mask in
             zip(images, masks, strict=True)]
    rows.append({"pipeline": f"reference: torchvision v2.ElasticTransform, {batch} samples @ "
                             f"{size} px one by one",
                 "ms": 1000 * median_time(lambda: [elastic(*pair) for pair in pairs],
                                          repeats=3, warmup=1)})
    return rows


def placement_rows(size: int = 512, batch: int = 8) -> list[dict]:
    """CPU time per batch of the GPU recipe (8 @ 512 px) on each side of `data.augment_on`:
    what a loader worker does (convert the prepared arrays, collate, augment or not; seeds
    0-7 draw 4 elastic deformations), and the batched augmentation as the GPU runs it (every
    sample + where), timed here on the CPU."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[128:384, 160:400] = 1
    to_tensors = SegmentationTransform(as_uint8=True)

    def items() -> list[tuple]:  # what KeyedDataset gives the worker's collate_fn
        return [(*to_tensors(image, mask), index, index) for index in range(batch)]

    augment = BatchAugment(AugmentConfig(), size, size)
    in_workers, gather_only = BatchCollate(augment), BatchCollate()
    images, masks, _ = gather_only(items())
    params = augment.draw(range(batch))
    cases = {
        "loader side, augment_on loader (convert, collate, augment in the workers)":
            lambda: in_workers(items()),
        "loader side, augment_on device (the workers only convert and collate)":
            lambda: gather_only(items()),
        "device side, augment_on device: draw the parameters":
            lambda: augment.draw(range(batch)),
        "device side, augment_on device: apply every sample + where, timed on this CPU":
            lambda: augment.apply(images, masks, params, branchless=True),
    }
    return [{"pipeline": f"per batch {batch} @ {size} px: {name}",
             "ms": 1000 * median_time(fn, repeats=10)} for name, fn in cases.items()]


def step_rows(threads: int) -> list[dict]:
    """The consumers: a training step of the cpu_small recipe (the model the CPU loader
    feeds) and of a small DeepLab-v3 (MobileNetV3) on a batch 8 @ 256, all threads."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    from bench_train import step_time

    torch.set_num_threads(threads)
    small = recipe("cpu_small")
    seconds = step_time(small, small.data.batch_size, torch.device("cpu"), repeats=3)
    rows = [{"pipeline": f"consumer: cpu_small train step, batch {small.data.batch_size} @ "
                         f"{small.data.image_size} px, {threads} threads",
             "batches/s": 1 / seconds}]
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1)
    optimiser = torch.optim.Adam(model.parameters())
    images, masks = torch.randn(8, 3, 256, 256), torch.rand(8, 1, 256, 256).round()

    def step() -> None:
        optimiser.zero_grad()
        logits = model(images)["out"]
        torch.nn.functional.binary_cross_entropy_with_logits(logits, masks).backward()
        optimiser.step()

    rows.append({"pipeline": f"consumer: DeepLabV3-MobileNetV3 train step, batch 8 @ 256 px, "
                             f"{threads} threads",
                 "batches/s": 1 / median_time(step, repeats=1, warmup=1)})
    return rows


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


def prepare_report(work: Path) -> Path:
    """The `data prepare` table; returns the folder the loader is timed on (the real set, or
    the synthetic large JPEGs without it)."""
    workers = default_workers()
    rows, notes = [], [f"prepare at {SIZE} px; plain = Pillow open + full decode + resize, "
                       "no draft, nothing written; same process pool size"]
    big = work / "big"
    start = time.perf_counter()
    make_big(big)
    notes.append(f"8 synthetic 6000x4000 JPEGs generated in {time.perf_counter() - start:.0f} s")
    if REAL.is_dir():
        rows += prepare_rows(f"real ({REAL.name})", REAL, workers)
    else:
        notes.append(f"real set not found at {REAL} (set DERMASEG_REAL): skipped")
    rows += prepare_rows("synthetic 6000x4000 JPEG", big, workers)
    report("data_prepare", "dermaseg data prepare: images per second", rows, notes)
    return REAL if REAL.is_dir() else big


def loader_report(source: Path, work: Path) -> None:
    """The training loader (batched augmentation in its workers) against the model's step."""
    prepared, prepared_small = work / "prepared256", work / "prepared192"
    prepare_dataset(source, prepared, size=256, progress=False)
    prepare_dataset(source, prepared_small, size=192, val=0.15, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in DataLoader workers; avoids thread-spin under load
    loaders = loader_rows(prepared, prepared_small)
    rows = loaders + augment_rows() + placement_rows()
    steps = step_rows(threads)
    loader_bps, step_bps = loaders[-1]["batches/s"], steps[0]["batches/s"]  # cpu_small's
    report("data_loader", "Training data pipeline (CPU): the loader against the model",
           rows + steps, [
               f"data from {source.name}; loaders and augmentation timed with 1 torch thread "
               "(DataLoader workers use 1), the training steps with all",
               "the augmentation is one batched implementation (dermaseg.data.augment), here "
               "applied to each batch in the loader workers",
               f"cpu_small: the loader delivers {loader_bps:.0f} batches/s, the model trains "
               f"{step_bps:.2f} steps/s: the loader is {loader_bps / step_bps:.0f}x faster "
               "than needed (it keeps up when its batches/s exceed the consumer's)"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loader-only", action="store_true",
                        help="only the training loader table (skip `data prepare`)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        if args.loader_only:
            source = REAL if REAL.is_dir() else None
            if source is None:
                source = Path(work) / "synth"
                synth_dataset(64, source, seed=0, progress=False)
        else:
            source = prepare_report(Path(work))
        loader_report(source, Path(work))


if __name__ == "__main__":
    main(sys.argv[1:])
