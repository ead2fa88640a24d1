"""Training speed on this machine: the model's step rate against the loader's batch rate.

    python bench/bench_train.py              # CPU; on a GPU machine it measures the GPU too
    python bench/bench_train.py --quick      # fewer repeats

For each shipped recipe (cpu_small and the tutorial's deeplabv3_resnet50_isic,
random weights, no download): one training step (forward, loss, backward, optimiser step) on a
batch of the recipe's size, median over a few repeats -> images/s; and the training
DataLoader of the recipe (PreparedDataset + augmentation, the recipe's workers) on a synthetic
prepared set at the recipe's size -> batches/s. When the loader delivers fewer batches per
second than the model consumes, the loader is the bottleneck. ResNet-50 at 512 px takes a
batch of 2 on CPU (a batch of 8 is ~30 s per step there); its images/s is per image.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import median_time, report
from dermaseg.config_io import load_config
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.train.averaging import moving_average
from dermaseg.train.datamodule import SegmentationDataModule, loader_workers
from dermaseg.train.module import SegmentationModule

RECIPES = [("cpu_small", None), ("deeplabv3_resnet50_isic", 2)]  # (recipe, CPU batch)


def step_time(config, batch: int, device: torch.device, repeats: int,
              ema_decay: float | None = None) -> float:
    """Median seconds of one optimiser step on a random batch (and, with `ema_decay`, the
    update of the weights' moving average that `train.ema_decay` adds to it)."""
    module = SegmentationModule(config).to(device).train()
    if device.type == "cuda" and config.train.channels_last:
        module.model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-4)
    size = config.data.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    average = None if ema_decay is None else moving_average(module.model, ema_decay)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = module.criterion(module.model(images), masks)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(module.model)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_time(step, repeats=repeats, warmup=1)


def loader_rate(config, data_dir: Path, batches: int) -> float:
    """Batches per second from the recipe's training DataLoader (after its first batch)."""
    datamodule = SegmentationDataModule(config, data_dir)
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    next(iterator)  # worker start-up
    start = time.perf_counter()
    count = sum(1 for _ in itertools.islice(iterator, batches))
    return count / (time.perf_counter() - start)


def synthetic_prepared(root: Path, size: int, count: int) -> Path:
    raw, out = root / f"raw{size}", root / f"prep{size}"
    synth_dataset(count, raw, seed=0, options=SynthOptions(min_side=size, max_side=size * 2),
                  progress=False)
    prepare_dataset(raw, out, size=size, val=0.1, test=0.0, seed=0, progress=False)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 4
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cpu_batch in RECIPES:
            config = load_config(name, ["model.pretrained=null"])
            data_dir = synthetic_prepared(Path(tmp), config.data.image_size, 40)
            loader_bps = loader_rate(config, data_dir, batches=3 if args.quick else 6)
            for device in devices:
                batch = cpu_batch if device.type == "cpu" and cpu_batch else \
                    config.data.batch_size
                seconds = step_time(config, batch, device, repeats)
                with_ema = step_time(config, batch, device, repeats, ema_decay=0.99)
                model_bps = 1.0 / seconds * batch / config.data.batch_size
                rows.append({
                    "recipe": name, "device": device.type, "size": config.data.image_size,
                    "batch": batch, "step_s": seconds, "train_images_per_s": batch / seconds,
                    "step_with_ema_ratio": with_ema / seconds,
                    "model_batches_per_s": model_bps, "loader_batches_per_s": loader_bps,
                    "loader_workers": loader_workers(config.data.num_workers),
                    "bottleneck": "loader" if loader_bps < model_bps else "model",
                })
    report("train", "Training step vs data loader (batches of the recipe's batch size)", rows, [
        "train_images_per_s: forward + Dice/BCE loss + backward + Adam step, random weights; "
        "fp32 on CPU, bf16 autocast + channels_last on GPU.",
        "step_with_ema_ratio: the step plus the update of the weights' moving average "
        "(train.ema_decay), against the step alone.",
        "model_batches_per_s is for the recipe's batch size (scaled when the CPU batch is "
        "smaller); loader_batches_per_s: the recipe's DataLoader (augmentation on) on a "
        "synthetic prepared set; the loader is the bottleneck when it is the smaller rate.",
        "Measured while other jobs may share the CPU: compare rows of one run only.",
    ])


if __name__ == "__main__":
    main(sys.argv[1:])
