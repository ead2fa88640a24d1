"""Training batches finished on the device, and the training split kept there.

A training batch leaves the loader as uint8 arrays (augmented there with `data.augment_on`
loader); around its transfer to the device (`TrainingBatches`, called by the training module's
batch hooks and by `bench/gpu_bench.py`) each sample's augmentation parameters are drawn on the
CPU when the augmentation runs on the device, then the batch is augmented there
(`dermaseg.data.augment`, the same implementation as the loader's), made channels_last and
normalised on the device.

With `data.gather_on: device` (auto: on a GPU, when the augmentation runs there too and the
split takes at most a quarter of the GPU's memory) the whole training split is copied to the
device once (`DeviceSplit`) and the loader yields only sample indices: no worker processes,
no shared-memory batches, no host-to-device copy per step. On an H100 a CUDA-graph step fed
this way was busy 0.94 of the time, fed by 8 workers 0.66-0.81 (the main process receiving
each batch; bench/results/gpu.md, gpu_graphs.md).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from dermaseg.config import Config
from dermaseg.data.augment import PLACES, BatchAugment
from dermaseg.data.dataset import PreparedDataset
from dermaseg.errors import DermasegError
from dermaseg.preprocessing import Preprocessing

DEVICE_SHARE = 0.25  # auto: the split may take at most this share of the GPU's memory
CHUNK = 64  # items copied to the device at a time


def split_bytes(items: int, size: int) -> int:
    """Bytes of `items` uint8 images (3 channels) and masks at `size` x `size`."""
    return items * size * size * 4


def gather_on_device(place: str, augment_on_device: bool, on_gpu: bool, nbytes: int) -> bool:
    """Whether `data.gather_on` keeps the training split on the device.

    Raises:
        DermasegError: `place` is unknown, or "device" without the augmentation on the device.
    """
    if place not in PLACES:
        raise DermasegError(f"data.gather_on: must be one of {', '.join(PLACES)}, got {place!r}")
    if place == "device" and not augment_on_device:
        raise DermasegError("data.gather_on=device needs the augmentation on the device too "
                            "(data.augment_on: device, or auto on a GPU)")
    if place != "auto":
        return place == "device"
    if not (augment_on_device and on_gpu):
        return False
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return nbytes <= DEVICE_SHARE * total


class IndexDataset(Dataset):
    """Item `(epoch, index)` -> index: what the loader yields when the split is on the device."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[1]


class DeviceSplit:
    """A prepared split's uint8 arrays in the device's memory: images N x H x W x 3 and masks
    N x H x W, copied in chunks (the host holds CHUNK items at a time)."""

    def __init__(self, dataset: PreparedDataset, device: torch.device) -> None:
        size, count = dataset.image_size, len(dataset)
        self.images = torch.empty((count, size, size, 3), dtype=torch.uint8, device=device)
        self.masks = torch.empty((count, size, size), dtype=torch.uint8, device=device)
        for start in range(0, count, CHUNK):
            stop = min(count, start + CHUNK)
            pairs = [dataset.arrays(i) for i in range(start, stop)]
            self.images[start:stop] = torch.stack([torch.from_numpy(i) for i, _ in pairs])
            self.masks[start:stop] = torch.stack([torch.from_numpy(m) for _, m in pairs])

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images N x 3 x H x W and masks N x 1 x H x W, uint8, contiguous as the loader's (the
        augmentation then rounds exactly as on the loader path)."""
        indices = indices.to(self.images.device)
        images = self.images.index_select(0, indices).permute(0, 3, 1, 2).contiguous()
        return images, self.masks.index_select(0, indices).unsqueeze(1)


class TrainingBatches:
    """The training module's batch hooks: `before_transfer` on the CPU, `after_transfer` on
    the device. Loader batches are (images, masks, indices) uint8, or indices alone when the
    split is on the device (`split`)."""

    def __init__(self, config: Config, augment: BatchAugment | None,
                 split: DeviceSplit | None = None) -> None:
        self.config, self.augment, self.split = config, augment, split
        self.preprocessing = Preprocessing.from_config(config)

    def before_transfer(self, batch, seeds) -> tuple:
        """(images or None, masks or None, indices[, parameters]); `seeds(indices)` gives the
        samples' augmentation seeds (drawn only when the augmentation runs on the device)."""
        if isinstance(batch, torch.Tensor):
            batch = (None, None, batch)
        images, masks, indices = batch
        if self.augment is None:
            return images, masks, indices
        params = self.augment.draw(seeds(indices.tolist()))
        if torch.cuda.is_available():  # the transfer then copies them without waiting
            params = {name: value.pin_memory() for name, value in params.items()}
        return images, masks, indices, params

    def after_transfer(self, batch, device: torch.device) -> tuple:
        """(normalised float images N x 3 x H x W, float masks N x 1 x H x W, indices) on
        `device`."""
        images, masks, indices, *params = batch
        if images is None:
            if self.split is None:
                raise DermasegError("a batch of indices, but no training split on the device")
            images, masks = self.split.gather(indices)
        if params and self.augment is not None:  # params come only from self.augment
            images, masks = self.augment.apply(images, masks, params[0])
        if device.type == "cuda" and self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if images.dtype == torch.uint8:  # the loader's and the augmentation's output
            images = self.preprocessing.normalise_tensor(images)
        return images, masks.float(), indices
