"""Data loading for training: PreparedDataset splits behind a LightningDataModule.

Reproducibility and exact resume rest on two choices:

* the training order is a function of (seed, epoch) only (`EpochSampler`), sharded by rank
  under DDP, and it can skip the batches an interrupted epoch already trained on;
* each sample's augmentation is drawn from a torch generator seeded by (seed, epoch, index)
  (`sample_seed`), so it does not depend on which worker loads it, on the number of workers,
  on where in an epoch a run was resumed, or on where the augmentation runs.

Batches are (images (N, 3, H, W) uint8, masks (N, 1, H, W) uint8 {0, 1}, indices (N,) int64).
The batched augmentation (`dermaseg.data.augment`) runs in the loader workers on each batch
they collate (`BatchCollate`), or on the device in the training module's batch hooks when
`data.augment_on` puts it there (the default on a GPU); the module normalises on the device.
With `data.gather_on` on the device, training batches are the indices alone and the module
gathers the samples from the split it keeps there (`dermaseg.train.device_batches`).
"""

from __future__ import annotations

import os
import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from dermaseg.config import Config
from dermaseg.data.augment import BatchAugment, augment_on_device
from dermaseg.data.dataset import CACHE_LIMIT_BYTES, PreparedDataset, Transform
from dermaseg.data.prepare import MANIFEST
from dermaseg.data.splits import fold_members
from dermaseg.errors import DermasegError
from dermaseg.parallel import usable_cores
from dermaseg.train.device_batches import IndexDataset, gather_on_device, split_bytes

# More workers than 8 starved the training process of CPU on a 16-core GPU machine.
MAX_WORKERS = 8


def loader_workers(requested: int) -> int:
    """`num_workers` from the config: -1 means one per available CPU core, at most 8."""
    if requested >= 0:
        return requested
    return min(usable_cores(), MAX_WORKERS)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: distinct for every (seed, epoch, index)."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63 - 1)


def _set_up(dataset: KeyedDataset | None) -> KeyedDataset:
    """A split of the data module, which exists once `setup` has run."""
    if dataset is None:
        raise RuntimeError("the data module's splits are used before its setup()")
    return dataset


class KeyedDataset(Dataset):
    """Wraps a dataset of uint8 (image 3 x H x W, mask 1 x H x W) items; item `(epoch, index)`
    -> (image, mask, index, the sample's augmentation seed `sample_seed(seed, epoch, index)`).
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base = base
        self.seed = seed

    def __len__(self) -> int:  # torch's Dataset declares no __len__; map-style ones have it
        return len(self.base)  # pyright: ignore[reportArgumentType]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, mask = self.base[index]
        return image, mask, index, sample_seed(self.seed, epoch, index)


class BatchCollate:
    """The loaders' `collate_fn`: `KeyedDataset` items -> (images N x 3 x H x W uint8, masks
    N x 1 x H x W uint8, indices (N,) int64), augmented by `augment` when given, in the
    loader worker that collates the batch (drawing from no global RNG)."""

    def __init__(self, augment: BatchAugment | None = None) -> None:
        self.augment = augment

    def __call__(self, items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, masks, indices, seeds = zip(*items, strict=True)
        images, masks = torch.stack(images), torch.stack(masks)
        if self.augment is not None:
            images, masks = self.augment(images, masks, seeds)
        return images, masks, torch.tensor(indices, dtype=torch.int64)


class EpochSampler(Sampler):
    """Yields `(epoch, index)` keys: a (seed, epoch) permutation, this rank's share of it.

    Args:
        size: dataset length.
        shuffle: permute (training) or keep the order (evaluation).
        seed: base seed of the permutation.
        rank, world: this process's share under DDP (every `world`-th item from `rank`).
        batch_size, drop_last: only used to count batches for `skip_batches`.
        even: make every rank's share the same length (training under DDP needs it).
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1,
                 batch_size: int = 1, even: bool = True) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.even = even
        self.epoch = 0
        self.skip = 0  # samples to skip in the next iteration only (resume mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, epoch: int, batches: int) -> None:
        """Start the next iteration at `epoch`, after its first `batches` batches."""
        self.epoch = epoch
        self.skip = batches * self.batch_size

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        share = order[self.rank::self.world]
        if self.even:
            share = share[: self.size // self.world]
        return share

    def __len__(self) -> int:
        return self.size // self.world if self.even else len(range(self.rank, self.size,
                                                                   self.world))

    def __iter__(self):
        share = self._indices()[self.skip:]
        self.skip = 0
        # A list, not a generator: the permutation is fixed when iteration starts.
        return iter([(self.epoch, index) for index in share])


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each loader worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class FoldDataset(PreparedDataset):
    """Cross-validation: the items of the pool (train + val) outside `fold` (role "train") or
    in it (role "val"), of a folder prepared with `dermaseg data prepare --folds K`.

    Raises:
        UsageError: the folder has no folds, or `fold` is not one of them.
    """

    def __init__(self, root: str | os.PathLike, fold: int, role: str,
                 image_size: int | None = None, transform: Transform | None = None) -> None:
        super().__init__(root, "all", image_size, transform, cache=False)
        train, val = fold_members(self.manifest, fold, str(self.root / MANIFEST))
        self.split, self.items = role, train if role == "train" else val
        if self.image_size * self.image_size * 4 * len(self.items) <= CACHE_LIMIT_BYTES:
            self._cache = [self.arrays(i) for i in range(len(self.items))]


class SegmentationDataModule(L.LightningDataModule):
    """Train/val loaders over a folder written by `dermaseg data prepare`; with `data.fold`,
    the other folds train and that fold validates (`FoldDataset`).

    Args:
        world_size: training processes (DDP), until a Trainer says how many.

    Raises:
        DermasegError: the folder is not a prepared dataset, a split is empty, or a process's
            share of the training split is smaller than one batch.
    """

    def __init__(self, config: Config, data_dir: str | os.PathLike, world_size: int = 1) -> None:
        super().__init__()
        self.config = config
        self.data_dir = data_dir
        self.world_size = world_size
        self.train_set: KeyedDataset | None = None
        self.val_set: KeyedDataset | None = None
        self.train_sampler: EpochSampler | None = None
        self.gather_on_device = False  # data.gather_on, decided by setup
        # the training loader's collate_fn: augments in the workers unless on the device
        self.train_collate = BatchCollate()

    def setup(self, stage: str | None = None) -> None:
        from dermaseg.data.transforms import build_transform

        data, seed = self.config.data, self.config.train.seed
        if self.train_set is None:
            on_device = augment_on_device(data.augment_on, torch.cuda.is_available())
            if not on_device:
                self.train_collate = BatchCollate(
                    BatchAugment(data.augment, data.image_size, data.image_size))
            transform = build_transform(data, as_uint8=True)
            if data.fold is None:
                train = PreparedDataset(self.data_dir, "train", data.image_size, transform)
                val = PreparedDataset(self.data_dir, "val", data.image_size, transform)
            else:
                train = FoldDataset(self.data_dir, data.fold, "train", data.image_size,
                                    transform)
                val = FoldDataset(self.data_dir, data.fold, "val", data.image_size, transform)
            for name, split in (("train", train), ("val", val)):
                if len(split) == 0:
                    raise DermasegError(f"{self.data_dir}: the {name} split is empty; prepare "
                                        "the data with a non-zero --val fraction")
            if train.prepared_size < data.image_size:
                rank_zero_warn(
                    f"{self.data_dir}: prepared at {train.prepared_size} px, below "
                    f"data.image_size {data.image_size}: images are upscaled (no detail is "
                    f"gained); prepare at --size {data.image_size} or set "
                    f"data.image_size={train.prepared_size}")
            self.train_set, self.val_set = KeyedDataset(train, seed), KeyedDataset(val, seed)
            self.gather_on_device = gather_on_device(
                data.gather_on, on_device, torch.cuda.is_available(),
                split_bytes(len(train), data.image_size))
        self._check_one_batch()

    def _check_one_batch(self) -> None:
        world = self.trainer.world_size if self.trainer is not None else self.world_size
        size, batch = len(_set_up(self.train_set)), self.config.data.batch_size
        if size // world >= batch:
            return
        share = f" ({size // world} for each of {world} processes)" if world > 1 else ""
        raise DermasegError(f"{self.data_dir}: {size} training images{share}, fewer than "
                            f"data.batch_size={batch}; lower data.batch_size")

    def batches_per_epoch(self, world: int) -> int:
        """Training batches per epoch on each of `world` processes (the last part batch is
        dropped); available after `setup`."""
        return len(_set_up(self.train_set)) // world // self.config.data.batch_size

    def describe(self, indices: list[int]) -> list[str]:
        """Image ids of training-set indices (for messages naming a batch)."""
        items = getattr(self.train_set.base, "items", None) if self.train_set else None
        if not items:
            return [str(i) for i in indices]
        return [str(items[i].get("id", i)) for i in indices]

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: KeyedDataset, sampler: EpochSampler, drop_last: bool,
                collate: BatchCollate, batch_size: int):
        workers = loader_workers(self.config.data.num_workers)
        on_gpu = torch.cuda.is_available()
        extra = {"persistent_workers": True, "prefetch_factor": 4 if on_gpu else 2,
                 "worker_init_fn": seed_worker} if workers > 0 else {}
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler,
            num_workers=workers, pin_memory=on_gpu, drop_last=drop_last, collate_fn=collate,
            # Its own generator: creating an iterator never draws from the global RNG.
            generator=torch.Generator().manual_seed(self.config.train.seed), **extra,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        train_set = _set_up(self.train_set)
        self.train_sampler = EpochSampler(
            len(train_set), shuffle=True, seed=self.config.train.seed, rank=rank,
            world=world, batch_size=self.config.data.batch_size)
        self._position_for_resume(self.train_sampler)
        if self.gather_on_device:  # indices only: the module gathers from its DeviceSplit
            return DataLoader(IndexDataset(len(train_set)),
                              batch_size=self.config.data.batch_size,
                              sampler=self.train_sampler, drop_last=True,
                              # its own generator: an iterator draws nothing from the global
                              # RNG (dropout), as the workers' loader
                              generator=torch.Generator().manual_seed(self.config.train.seed))
        return self._loader(train_set, self.train_sampler, drop_last=True,
                            collate=self.train_collate, batch_size=self.config.data.batch_size)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        val_set = _set_up(self.val_set)
        sampler = EpochSampler(len(val_set), shuffle=False, seed=0, rank=rank,
                               world=world, even=False)
        return self._loader(val_set, sampler, drop_last=False, collate=BatchCollate(),
                            batch_size=self.config.data.validation_batch)

    def _position_for_resume(self, sampler: EpochSampler) -> None:
        """After a restore, start where the interrupted run stopped.

        Lightning creates the first iterator before it sets the sampler's epoch and does not
        skip batches already trained on, so both are taken from its restored progress here.
        """
        trainer = self.trainer
        if trainer is None or trainer.ckpt_path is None:
            return
        # both trackers are _ProcessedTracker; Lightning declares them as their base class
        epochs, batches_done = (trainer.fit_loop.epoch_progress.current,
                                trainer.fit_loop.epoch_loop.batch_progress.current)
        epoch = epochs.processed  # pyright: ignore[reportAttributeAccessIssue]
        done = batches_done.processed  # pyright: ignore[reportAttributeAccessIssue]
        batches = len(sampler) // sampler.batch_size
        if done >= batches:
            sampler.skip_batches(epoch + 1, 0)
        else:
            sampler.skip_batches(epoch, done)
