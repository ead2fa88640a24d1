"""The training/evaluation Dataset over a folder written by `dermaseg data prepare`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dermaseg.data.manifest import read_manifest
from dermaseg.data.prepare import MANIFEST, SPLITS
from dermaseg.data.transforms import SegmentationTransform
from dermaseg.errors import DermasegError
from dermaseg.geometry import Letterbox, letterbox_image

CACHE_LIMIT_BYTES = 1 << 30  # cache=None keeps a split in RAM when its arrays fit in 1 GiB

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DermasegError(f"{path}: missing prepared file; run `dermaseg data prepare` "
                            "again to rebuild it") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DermasegError(f"{path}: corrupt prepared file ({exc})") from exc
    if array.shape != shape or array.dtype != np.uint8:
        raise DermasegError(f"{path}: expected uint8 {shape}, found {array.dtype} {array.shape}")
    return array


def reletterbox(image: np.ndarray, mask: np.ndarray, box: Letterbox, size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Re-fit prepared arrays (letterboxed by `box`) to a `size` canvas with the geometry
    `Letterbox.fit` gives the original image at `size`, as the Predictor will use it."""
    target = Letterbox.fit(box.orig_height, box.orig_width, size)
    content = Image.fromarray(np.ascontiguousarray(box.crop(image.transpose(2, 0, 1))
                                                   .transpose(1, 2, 0)))
    lesion = Image.fromarray(np.ascontiguousarray(box.crop(mask)))
    out_image, _ = letterbox_image(content, size, box=target)
    out_mask, _ = letterbox_image(lesion, size, is_mask=True, box=target)
    return out_image, out_mask


class PreparedDataset(Dataset):
    """Items of one split of a prepared folder as (image, mask) tensors.

    Args:
        root: folder written by `prepare_dataset`.
        split: "train", "val", "test" or "all".
        image_size: network input side; None or the prepared size uses the arrays as they are,
            another size re-letterboxes them (bilinear image, nearest mask).
        transform: (uint8 HxWx3, uint8 HxW 0/1) -> (float 3xHxW, float 1xHxW); default
            normalises with ImageNet mean/std and does not augment.
        cache: keep the split's arrays in RAM (shared with forked DataLoader workers);
            None: only when they fit in CACHE_LIMIT_BYTES.

    Returns per item: image float32 3 x S x S (normalised), mask float32 1 x S x S in {0, 1}.

    Raises:
        DermasegError: missing/corrupt manifest, unknown split, missing or corrupt item file.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 image_size: int | None = None, transform: Transform | None = None,
                 cache: bool | None = None) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if split not in (*SPLITS, "all"):
            raise DermasegError(f"split {split!r}: expected one of {', '.join(SPLITS)}, all")
        self.split = split
        self.items = [item for item in self.manifest["items"]
                      if split == "all" or item["split"] == split]
        self.prepared_size = int(self.manifest["size"])
        self.image_size = image_size or self.prepared_size
        self.transform = transform or SegmentationTransform()
        per_item = self.image_size * self.image_size * 4
        if cache is None:
            cache = per_item * len(self.items) <= CACHE_LIMIT_BYTES
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            self._cache = [self.arrays(i) for i in range(len(self.items))]

    def __len__(self) -> int:
        return len(self.items)

    def letterbox(self, index: int) -> Letterbox:
        """Geometry of item `index` at `image_size` (to map predictions back)."""
        item = self.items[index]
        return Letterbox.fit(item["orig_height"], item["orig_width"], self.image_size)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as uint8 arrays at `image_size`: image HxWx3, mask HxW in {0, 1}."""
        if self._cache is not None:
            return self._cache[index]
        item = self.items[index]
        side = self.prepared_size
        image = _load_array(self.root / item["image"], (side, side, 3))
        mask = _load_array(self.root / item["mask"], (side, side))
        if self.image_size != side:
            try:
                box = Letterbox(**item["letterbox"])
            except TypeError as exc:
                raise DermasegError(f"{self.root / MANIFEST}: item {item['id']}: bad "
                                    f"letterbox ({exc})") from exc
            image, mask = reletterbox(image, mask, box, self.image_size)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.arrays(index)
        return self.transform(image, mask)
