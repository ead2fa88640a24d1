"""The GPU benchmark's data-pipeline stage (`bench/gpu_bench.py`): training steps fed by the
recipe's DataLoader and batch hooks, against the same steps on a fixed on-device batch."""

from __future__ import annotations

from pathlib import Path

import torch

from gpu_steps import fixed_batches, step_fn, syncs_per_step, timed


def _on_device(batch, device: torch.device):
    """The batch's tensors on `device`, copied without waiting, as Lightning moves a batch."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {name: _on_device(value, device) for name, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_on_device(value, device) for value in batch)
    return batch


def _loader_batches(datamodule, loader, device: torch.device, config):
    """The loader's batches finished on the device by the training module's batch hooks
    (`TrainingBatches`: gathered from the split on the device with `data.gather_on`, augmented
    there with `data.augment_on`, normalised)."""
    from dermaseg.data.augment import BatchAugment, augment_on_device
    from dermaseg.train.datamodule import sample_seed
    from dermaseg.train.device_batches import DeviceSplit, TrainingBatches

    size, seed = config.data.image_size, config.train.seed
    augment = BatchAugment(config.data.augment, size, size) \
        if augment_on_device(config.data.augment_on, device.type == "cuda") else None
    split = DeviceSplit(datamodule.train_set.base, device) \
        if datamodule.gather_on_device else None
    batches, epoch = TrainingBatches(config, augment, split), 0
    while True:
        def seeds(indices: list[int], epoch: int = epoch) -> list[int]:
            return [sample_seed(seed, epoch, i) for i in indices]

        for batch in loader:
            batch = batches.before_transfer(batch, seeds)
            images, masks, _ = batches.after_transfer(_on_device(batch, device), device)
            yield images, masks
        epoch += 1


def _fed_row(config, data: Path, device: torch.device, step, compute: float, steps: int,
             warmup: int) -> dict:
    """Steps fed by the recipe's DataLoader (`config.data.num_workers`), then the loader alone
    (with the batch hooks' device work: gathering, augmentation, normalisation)."""
    from dermaseg.data.augment import augment_on_device
    from dermaseg.train.datamodule import SegmentationDataModule

    module = SegmentationDataModule(config, data)
    module.setup("fit")
    loader = module.train_dataloader()
    fed = _loader_batches(module, loader, device, config)
    timed(step, fed, warmup, device)
    fed_s = timed(step, fed, steps, device)
    syncs = syncs_per_step(step, fed, device)
    # The loader alone: first empty the batches prefetched while the GPU worked, then time.
    buffered = loader.num_workers * (loader.prefetch_factor or 0)
    timed(lambda *batch: None, fed, buffered + warmup, device)
    alone_s = timed(lambda *batch: None, fed, max(steps, 3 * buffered), device)
    on_device = augment_on_device(config.data.augment_on, device.type == "cuda")
    return {"augment_on": "device" if on_device else "loader",
            "gather_on": "device" if module.gather_on_device else "loader",
            "workers": loader.num_workers, "pin_memory": loader.pin_memory,
            "compute_step_ms": compute * 1000, "fed_step_ms": fed_s * 1000,
            "images_per_s": config.data.batch_size / fed_s,
            "loader_alone_images_per_s": config.data.batch_size / alone_s,
            "gpu_busy_fraction": min(1.0, compute / fed_s), "syncs_per_step": syncs}


def stage_loader(config, device: torch.device, data: Path, steps: int, warmup: int,
                 other_workers: list[int], loader_mode: str) -> dict:
    """The recipe's data pipeline (the goal's figure; on a GPU the split and the augmentation
    on the device), the other placements of gathering and augmentation, then the workers
    gathering with `other_workers` workers."""
    mode = loader_mode if device.type == "cuda" else "fp32"  # CPU bf16 is slow, off the point
    step = step_fn(config, device, mode)
    fixed = fixed_batches(config, device)
    timed(step, fixed, warmup, device)
    compute = timed(step, fixed, steps, device)

    def variant(label: str, **data_fields) -> dict:
        changed = config.updated({f"data.{name}": value for name, value in data_fields.items()})
        return {"mode": f"{mode}, {label}",
                **_fed_row(changed, data, device, step, compute, steps, warmup)}

    row = {"mode": f"{mode} fed as the recipe says", **_fed_row(config, data, device, step,
                                                                 compute, steps, warmup)}
    places = [("device", "device"), ("device", "loader"), ("loader", "loader")]
    row["by_workers"] = [
        variant(f"augment_on {augment}, gather_on {gather}", augment_on=augment,
                gather_on=gather)
        for augment, gather in places if (augment, gather) != (row["augment_on"],
                                                               row["gather_on"])]
    row["by_workers"] += [variant(f"gather_on loader, {workers} workers", augment_on="device",
                                  gather_on="loader", num_workers=workers)
                          for workers in other_workers]
    return row
