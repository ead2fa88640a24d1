"""The training split kept on the device (`data.gather_on`), the batch hooks
(`dermaseg.train.device_batches`) and the augmentation on either side of them, on CPU: the GPU
case is tests/train/test_cuda.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dermaseg.config_io import load_config
from dermaseg.data.augment import BatchAugment
from dermaseg.data.dataset import PreparedDataset
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.transforms import normalise_images
from dermaseg.errors import DermasegError
from dermaseg.train.datamodule import SegmentationDataModule, sample_seed
from dermaseg.train.device_batches import (
    DeviceSplit,
    TrainingBatches,
    gather_on_device,
    split_bytes,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synth_dir):
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(synth_dir, out, size=40, val=0.25, test=0.0, seed=0, progress=False)
    return out


def config(*extra: str):
    return load_config(None, ["data.image_size=40", "data.batch_size=3", "data.num_workers=0",
                              *extra])


def test_gather_on_rules():
    assert gather_on_device("device", True, False, 10**12)  # asked for: no size limit
    assert not gather_on_device("loader", True, True, 0)
    assert not gather_on_device("auto", True, False, 0)  # auto: only on a GPU
    assert not gather_on_device("auto", False, True, 0)  # auto: only with device augmentation
    with pytest.raises(DermasegError, match="needs the augmentation on the device"):
        gather_on_device("device", False, True, 0)
    with pytest.raises(DermasegError, match="data.gather_on: must be one of"):
        gather_on_device("gpu", True, True, 0)
    assert split_bytes(10, 512) == 10 * 512 * 512 * 4


def test_config_refuses_an_unknown_place():
    with pytest.raises(DermasegError, match="data.gather_on: must be auto, loader or device"):
        config("data.gather_on=gpu")


@pytest.mark.parametrize("size", [40, 32])  # the prepared size, and re-letterboxed
def test_split_on_the_device_holds_the_arrays(prepared, size):
    dataset = PreparedDataset(prepared, "train", size, cache=False)
    split = DeviceSplit(dataset, torch.device("cpu"))
    indices = torch.tensor([len(dataset) - 1, 0, 2])
    images, masks = split.gather(indices)
    assert images.shape == (3, 3, size, size) and masks.shape == (3, 1, size, size)
    assert images.is_contiguous()  # the loader's layout
    for row, index in enumerate(indices.tolist()):
        image, mask = dataset.arrays(index)
        assert np.array_equal(images[row].permute(1, 2, 0).numpy(), image)
        assert np.array_equal(masks[row, 0].numpy(), mask)


def test_gather_on_device_loader_yields_indices_alone(prepared):
    module = SegmentationDataModule(config("data.augment_on=device", "data.gather_on=device"),
                                    prepared)
    module.setup("fit")
    assert module.gather_on_device
    batch = next(iter(module.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.int64
    assert batch.shape == (3,) and len(set(batch.tolist())) == 3
    loader = SegmentationDataModule(config("data.augment_on=device"), prepared)
    loader.setup("fit")
    assert not loader.gather_on_device  # auto, on a CPU: the loader gathers
    images, masks, indices = next(iter(loader.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 40, 40)


@pytest.mark.parametrize(("setting", "sizes"), [((), [2, 1]), (("data.val_batch_size=3",), [3])])
def test_validation_batches_have_their_own_size(prepared, setting, sizes):
    module = SegmentationDataModule(config("data.batch_size=1", *setting), prepared)
    module.setup("fit")
    assert len(module.val_set) == 3  # auto: twice the training batch
    assert [len(indices) for _, _, indices in module.val_dataloader()] == sizes
    assert next(iter(module.train_dataloader()))[0].shape[0] == 1  # training keeps its own


EVERYTHING = ["data.augment.hflip=0.5", "data.augment.vflip=0.5", "data.augment.rotate90=0.5",
              "data.augment.brightness=0.2", "data.augment.contrast=0.2",
              "data.augment.elastic_p=0.5", "data.augment.elastic_sigma=16"]
ROBUST = ["data.augment.scale=0.3", "data.augment.hue=0.05", "data.augment.saturation=0.3",
          "data.augment.gamma=0.5", "data.augment.blur_p=0.5", "data.augment.noise=8",
          "data.augment.vignette_p=0.5", "data.augment.hair_p=0.5"]


def batches_seen(prepared, place: str, workers: int, epochs: int = 2,
                 steps: tuple[str, ...] = ()) -> list[tuple]:
    """Two epochs of training batches as the model receives them, the augmentation in the
    loader workers (`place` loader) or in the batch hooks (device: here the CPU)."""
    setting = config(f"data.augment_on={place}", f"data.num_workers={workers}", *EVERYTHING,
                     *steps)
    module = SegmentationDataModule(setting, prepared)
    module.setup("fit")
    size = setting.data.image_size
    augment = BatchAugment(setting.data.augment, size, size) if place == "device" else None
    hooks, loader, seen = TrainingBatches(setting, augment), module.train_dataloader(), []
    for epoch in range(epochs):
        module.train_sampler.set_epoch(epoch)

        def seeds(indices: list[int], epoch: int = epoch) -> list[int]:
            return [sample_seed(setting.train.seed, epoch, index) for index in indices]

        for batch in loader:
            seen.append(hooks.after_transfer(hooks.before_transfer(batch, seeds),
                                             torch.device("cpu")))
    return seen


@pytest.mark.parametrize(("workers", "steps"), [(0, ()), (1, ()), (1, tuple(ROBUST))],
                         ids=["0 workers", "1 worker", "1 worker, robust"])
def test_loader_and_device_augmentation_give_the_same_batches(prepared, workers, steps):
    """The same (seed, epoch, index) gives the same augmented sample whether a loader worker
    (one thread) or the batch hooks (the training process's threads) augment it; with the
    steps for other clinics' dermoscopes too."""
    in_loader = batches_seen(prepared, "loader", workers, steps=steps)
    on_device = batches_seen(prepared, "device", workers, steps=steps)
    assert len(in_loader) == len(on_device) > 2
    for (images, masks, indices), (d_images, d_masks, d_indices) in zip(in_loader, on_device,
                                                                        strict=True):
        assert torch.equal(indices, d_indices)
        assert torch.equal(images, d_images) and torch.equal(masks, d_masks)
    dataset = PreparedDataset(prepared, "train", cache=False)
    setting = config()
    changed = 0
    for images, _, indices in in_loader:  # and it did augment
        for image, index in zip(images, indices.tolist(), strict=True):
            plain = torch.from_numpy(dataset.arrays(index)[0]).permute(2, 0, 1)
            plain = normalise_images(plain, setting.data.mean, setting.data.std)
            changed += not torch.equal(image, plain)
    assert changed == sum(len(indices) for *_, indices in in_loader)


def test_a_batch_of_indices_without_a_split_is_refused():
    batches = TrainingBatches(config(), augment=None)
    batch = batches.before_transfer(torch.tensor([0, 1]), seeds=lambda indices: indices)
    with pytest.raises(DermasegError, match="no training split on the device"):
        batches.after_transfer(batch, torch.device("cpu"))


def test_data_prepared_below_the_image_size_is_warned_about(prepared):
    """`train` upscaled 128-px data to a recipe's 192 px without a word (`plan` warned)."""
    with pytest.warns(UserWarning, match="prepared at 40 px, below data.image_size 64"):
        SegmentationDataModule(config("data.image_size=64"), prepared).setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SegmentationDataModule(config(), prepared).setup("fit")  # at the prepared size
