"""The two reference rows of the quality benchmark, on the same prepared split as dermaseg:

* `run_smp`: segmentation_models_pytorch's DeepLabV3 (ResNet-50, random weights, output
  stride 16, ASPP 6/12/18) trained with the tutorial's recipe (256x256, Adam 1e-4, batch 8,
  Dice + BCE, flips: dermaseg's batched augmentation in the loader) in a plain loop, for the
  same wall-clock budget; val metrics each epoch, per image and macro-averaged
  (`dermaseg.train.torch_metrics.batch_metrics`), at the prepared resolution, as dermaseg's own
  validation computes them;
* `run_otsu`: a classical baseline, Otsu's threshold on the blue (and the grey) channel inside
  the letterbox content, then the largest component and hole filling.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader
from tqdm import tqdm

from dermaseg.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from dermaseg.data.augment import BatchAugment
from dermaseg.data.dataset import PreparedDataset
from dermaseg.data.transforms import SegmentationTransform, normalise_images
from dermaseg.evaluation.metrics import METRIC_NAMES
from dermaseg.fileio import write_bytes_atomic
from dermaseg.infer.postprocess import PostprocessConfig, postprocess
from dermaseg.train.datamodule import BatchCollate, EpochSampler, KeyedDataset
from dermaseg.train.history import plot_curves
from dermaseg.train.torch_metrics import batch_metrics

TARGETS = (0.87, 0.90)


def minutes_to(rows: list[dict], target: float) -> float | None:
    """Minutes (the rows' `minutes`) at the first epoch whose val_dice reached `target`."""
    for row in rows:
        if float(row["val_dice"]) >= target:
            return round(float(row["minutes"]), 2)
    return None


def smp_model() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3(encoder_name="resnet50", encoder_weights=None,
                         encoder_output_stride=16, decoder_atrous_rates=(6, 12, 18), classes=1)


def _loaders(data: Path, size: int, batch: int) -> tuple[DataLoader, DataLoader, PreparedDataset]:
    """Training batches (uint8 images and masks, flipped in the loader, indices; the loop
    normalises), validation batches (normalised images, masks) and the val split."""
    flips = AugmentConfig(hflip=0.5, vflip=0.5, brightness=0.0, contrast=0.0, elastic_p=0.0,
                          rotate90=0.0)
    train = PreparedDataset(data, "train", size, SegmentationTransform(as_uint8=True))
    val = PreparedDataset(data, "val", size, SegmentationTransform())
    truth = PreparedDataset(data, "val")  # masks at the prepared resolution
    sampler = EpochSampler(len(train), shuffle=True, seed=42)
    return (DataLoader(KeyedDataset(train, seed=42), batch_size=batch, sampler=sampler,
                       drop_last=True, collate_fn=BatchCollate(BatchAugment(flips, size, size))),
            DataLoader(val, batch_size=batch), truth)


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: DataLoader, truth: PreparedDataset) -> dict[str, float]:
    """Macro-averaged per-image metrics; logits resized (bilinear) to the prepared size."""
    model.eval()
    sums = dict.fromkeys(METRIC_NAMES, 0.0)
    start = 0
    for images, _ in val:
        logits = model(images)
        side = truth.prepared_size
        logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        masks = torch.stack([torch.from_numpy(truth.arrays(start + i)[1])
                             for i in range(len(images))]).unsqueeze(1) > 0
        start += len(images)
        values = batch_metrics(torch.sigmoid(logits) > 0.5, masks)
        for name in METRIC_NAMES:
            sums[name] += float(values[name].sum())
    model.train()
    return {name: total / len(truth) for name, total in sums.items()}


def _train_epoch(model, loader, optimizer, loss_fn, deadline: float, epoch: int) -> float:
    losses = []
    loader.sampler.set_epoch(epoch)
    for images, masks, _ in tqdm(loader, desc=f"smp epoch {epoch}", leave=False):
        images = normalise_images(images, IMAGENET_MEAN, IMAGENET_STD)
        loss = loss_fn(model(images), masks.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if time.perf_counter() > deadline:
            break
    return float(np.mean(losses)) if losses else float("nan")


def run_smp(data: Path, minutes: float, results: Path, size: int = 256, batch: int = 8) -> dict:
    """Train the smp peer for `minutes` of wall clock; curve to results/quality_smp.png."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(42)
    train, val, truth = _loaders(data, size, batch)
    model = smp_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    bce = smp.losses.SoftBCEWithLogitsLoss()

    def loss_fn(logits, masks):
        return dice(logits, masks) + bce(logits, masks)

    start = time.perf_counter()
    deadline = start + minutes * 60
    rows: list[dict] = []
    while time.perf_counter() < deadline:
        epoch = len(rows)
        train_loss = _train_epoch(model, train, optimizer, loss_fn, deadline, epoch)
        metrics = evaluate(model, val, truth)
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_dice": metrics["dice"],
                     "val_iou": metrics["jaccard"], "lr": 1e-4,
                     "val_threshold_jaccard": metrics["threshold_jaccard"],
                     "minutes": (time.perf_counter() - start) / 60})
        print(f"smp epoch {epoch}: val Dice {metrics['dice']:.4f} "
              f"({rows[-1]['minutes']:.1f} min)", flush=True)
    results.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(results / "quality_smp.png", plot_curves(rows))
    best = max(rows, key=lambda row: row["val_dice"])
    return {
        "variant": "smp", "best_val_dice": best["val_dice"], "best_val_iou": best["val_iou"],
        "best_val_threshold_jaccard": best["val_threshold_jaccard"],
        "best_epoch": best["epoch"], "epochs": len(rows),
        "minutes": round(rows[-1]["minutes"], 2),
        **{f"minutes_to_{t}": minutes_to(rows, t) for t in TARGETS},
        "s_per_epoch": round(rows[-1]["minutes"] * 60 / len(rows), 1),
    }


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the t maximising the between-class variance of
    {v <= t} and {v > t}."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(hist * levels)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return int(np.argmax(between))


def otsu_mask(image: np.ndarray, content: tuple[slice, slice], channel: str) -> np.ndarray:
    """(S, S) bool lesion mask of a letterboxed uint8 image: darker than Otsu's threshold
    (computed on the content region only), largest component, holes filled."""
    plane = image[..., 2] if channel == "blue" else image.mean(axis=2)
    plane = ndimage.gaussian_filter(plane.astype(np.float32), 2.0)
    plane = np.clip(plane, 0, 255).astype(np.uint8)
    threshold = otsu_threshold(plane[content])
    mask = np.zeros(plane.shape, bool)
    mask[content] = plane[content] <= threshold
    return postprocess(mask, config=PostprocessConfig(largest_component=True, fill_holes=True))


def run_otsu(data: Path) -> list[dict]:
    """Otsu rows (blue and grey channel) on the prepared val split."""
    truth = PreparedDataset(data, "val")
    rows = []
    for channel in ("blue", "grey"):
        start = time.perf_counter()
        preds, masks = [], []
        for index in range(len(truth)):
            image, mask = truth.arrays(index)
            box = truth.letterbox(index)
            content = (slice(box.pad_top, box.pad_top + box.new_height),
                       slice(box.pad_left, box.pad_left + box.new_width))
            preds.append(torch.from_numpy(otsu_mask(image, content, channel)))
            masks.append(torch.from_numpy(mask > 0))
        values = batch_metrics(torch.stack(preds), torch.stack(masks))
        rows.append({"variant": f"otsu_{channel}", "best_val_dice": float(values["dice"].mean()),
                     "best_val_iou": float(values["jaccard"].mean()),
                     "best_val_threshold_jaccard": float(values["threshold_jaccard"].mean()),
                     "minutes": round((time.perf_counter() - start) / 60, 3)})
    return rows
