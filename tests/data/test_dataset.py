"""PreparedDataset over a prepared synthetic folder: tensors, resizing, caching, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dermaseg.config import AugmentConfig
from dermaseg.data.augment import BatchAugment
from dermaseg.data.dataset import PreparedDataset, read_manifest
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.transforms import SegmentationTransform
from dermaseg.errors import DermasegError
from dermaseg.geometry import Letterbox

SIZE = 48


@pytest.fixture(scope="module")
def prepared(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(synth_dir, out, size=SIZE, val=0.25, test=0.25, workers=1, progress=False)
    return out


def test_items_are_normalised_tensors(prepared):
    counts = read_manifest(prepared)["counts"]
    for split in ("train", "val", "test"):
        assert len(PreparedDataset(prepared, split)) == counts[split]
    data = PreparedDataset(prepared, "all")
    assert len(data) == 12
    image, mask = data[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert mask.shape == (1, SIZE, SIZE) and set(mask.unique().tolist()) <= {0.0, 1.0}
    raw = np.load(prepared / data.items[0]["image"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    restored = (image * std + mean) * 255
    assert torch.allclose(restored, torch.from_numpy(raw).permute(2, 0, 1).float(), atol=1e-3)
    assert torch.equal(mask[0], torch.from_numpy(np.load(prepared / data.items[0]["mask"])).float())


def test_other_image_size_keeps_the_letterbox(prepared):
    data = PreparedDataset(prepared, "all", image_size=32)
    for index in range(len(data)):
        image, mask = data.arrays(index)
        box = data.letterbox(index)
        item = data.items[index]
        assert box == Letterbox.fit(item["orig_height"], item["orig_width"], 32)
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 1}
        outside = np.ones((32, 32), bool)
        outside[box.pad_top:box.pad_top + box.new_height,
                box.pad_left:box.pad_left + box.new_width] = False
        assert not image[outside].any() and not mask[outside].any()
        assert box.crop(mask).mean() == pytest.approx(item["lesion_fraction"], abs=0.08)
    tensor_image, tensor_mask = data[0]
    assert tensor_image.shape == (3, 32, 32) and tensor_mask.shape == (1, 32, 32)


def test_cache_and_loader(prepared):
    cached = PreparedDataset(prepared, "train", cache=True)
    lazy = PreparedDataset(prepared, "train", cache=False)
    assert cached._cache is not None and lazy._cache is None
    for index in range(len(cached)):
        assert all(torch.equal(a, b) for a, b in zip(cached[index], lazy[index], strict=True))
    from dermaseg.train.datamodule import BatchCollate, KeyedDataset

    as_bytes = PreparedDataset(prepared, "train", transform=SegmentationTransform(as_uint8=True))
    collate = BatchCollate(BatchAugment(AugmentConfig(), SIZE, SIZE))
    loader = DataLoader(KeyedDataset(as_bytes, seed=0), batch_size=4, collate_fn=collate,
                        sampler=[(0, index) for index in range(len(as_bytes))])
    images, masks, indices = next(iter(loader))
    assert images.shape == (4, 3, SIZE, SIZE) and masks.shape == (4, 1, SIZE, SIZE)
    assert images.dtype == masks.dtype == torch.uint8 and indices.tolist() == [0, 1, 2, 3]
    assert set(masks.unique().tolist()) <= {0, 1}


def test_clear_errors(prepared, tmp_path):
    with pytest.raises(DermasegError, match="manifest.json: no manifest"):
        PreparedDataset(tmp_path, "train")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DermasegError, match="corrupt manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"size": 8, "items": [{"id": "a"}]}))
    with pytest.raises(DermasegError, match="item 0 lacks split"):
        read_manifest(tmp_path)
    with pytest.raises(DermasegError, match="'training'"):
        PreparedDataset(prepared, "training")
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    item = read_manifest(copy)["items"][0]
    (copy / item["image"]).unlink()
    data = PreparedDataset(copy, "all", cache=False)
    with pytest.raises(DermasegError, match=f"{item['id']}.npy: missing prepared file"):
        data[0]
    (copy / item["image"]).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DermasegError, match=f"{item['id']}.npy: corrupt prepared file"):
        data[0]
