"""Checks that need an NVIDIA GPU (skipped elsewhere; run by `bench/gpu.sh`'s machine as
`python3 -m pytest tests/train/test_cuda.py`): the device augmentation gives the CPU's result, the
training batch path never makes the CPU wait for the GPU, and a short bf16 training run on
the GPU trains and predicts like the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermaseg.config import AugmentConfig, Config
from dermaseg.config_io import load_config
from dermaseg.data.augment import BatchAugment
from dermaseg.data.transforms import normalise_images
from dermaseg.train.losses import SegmentationLoss
from dermaseg.upload import count_syncs, sync_sites, upload

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SIZE = 64
EVERYTHING = AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, brightness=0.2, contrast=0.2,
                           elastic_p=1.0, elastic_alpha=8.0, elastic_sigma=16.0)
# and the steps for other clinics' dermoscopes (tests/data/test_augment_robust.py on CPU)
ROBUST = EVERYTHING.updated(scale=0.3, hue=0.05, saturation=0.3, gamma=0.5, blur_p=0.5,
                            noise=8.0, vignette_p=0.5, hair_p=0.5)


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    masks = (torch.rand(n, 1, SIZE, SIZE, generator=generator) > 0.5).to(torch.uint8)
    return images, masks


@pytest.mark.parametrize("config", [EVERYTHING, ROBUST], ids=["everything", "robust"])
def test_device_augmentation_on_the_gpu_matches_the_cpu(config):
    """The GPU runs every step on every sample (`torch.where`), the CPU only the drawn ones:
    the same pixels, up to a rounding to the other uint8 level."""
    images, masks = batch()
    augment = BatchAugment(config, SIZE, SIZE)
    params = augment.draw([11, 12, 13, 14])
    cpu_images, cpu_masks = augment.apply(images, masks, params)
    gpu_images, gpu_masks = augment.apply(images.cuda(), masks.cuda(), params)
    difference = (gpu_images.cpu().float() - cpu_images.float()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-2
    # nearest-neighbour resampling may round a pixel exactly between two the other way
    assert (gpu_masks.cpu() != cpu_masks).float().mean() < 1e-3


@pytest.mark.parametrize("steps", [EVERYTHING, ROBUST], ids=["everything", "robust"])
def test_training_batch_path_never_waits_for_the_gpu(steps):
    """Augmentation, normalisation and the loss (with pos_weight) queue their work without a
    host-device synchronisation, after a first call has copied the constants."""
    config = Config().updated({"loss.pos_weight": 3.0})
    criterion = SegmentationLoss(config.loss)
    augment = BatchAugment(steps, SIZE, SIZE)

    def one_batch(seed: int) -> torch.Tensor:
        images, masks = batch(seed=seed)
        images = upload(images, "cuda")
        masks = upload(masks, "cuda")
        images, masks = augment.apply(images, masks, augment.draw([seed, seed + 1, 2, 3]))
        images = normalise_images(images, config.data.mean, config.data.std)
        logits = images.mean(dim=1, keepdim=True)
        loss, _ = criterion(logits, masks.float())
        return loss

    one_batch(0)
    with count_syncs() as syncs:
        loss = one_batch(1)
    assert syncs == [], "\n\n".join(sync_sites(syncs))
    assert torch.isfinite(loss).item()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synth_dir):
    from dermaseg.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(synth_dir, out, size=SIZE, val=0.2, test=0.0, seed=0, progress=False)
    return out


def test_bf16_training_on_the_gpu_waits_once_per_step(prepared, tmp_path):
    """Device augmentation, the split on the GPU (`data.gather_on: auto`) and bf16: the run
    trains, its only synchronisation per step is the non-finite-loss guard's, and the
    checkpoint predicts on the GPU as on the CPU."""
    import lightning as L

    from dermaseg.infer.predictor import Predictor
    from dermaseg.train.callbacks import SyncCounter
    from dermaseg.train.runner import train

    config = load_config(None, ["model.backbone=resnet18", "model.pretrained=null",
                                "model.aspp_channels=16", f"data.image_size={SIZE}",
                                "data.batch_size=2", "data.num_workers=2",
                                "train.max_epochs=2", "train.precision=auto"])

    class Placement(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.gathered_on_device = trainer.datamodule.gather_on_device

    syncs, placement = SyncCounter(skip=1, steps=2), Placement()
    summary = train(config, prepared, tmp_path / "run", progress=False,
                    callbacks=[syncs, placement])
    assert placement.gathered_on_device
    assert summary["precision"] == "bf16-mixed"
    assert syncs.per_step is not None and syncs.per_step <= 1, \
        "\n\n".join(sync_sites(syncs.stacks))
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    best = tmp_path / "run" / "best.ckpt"
    on_gpu = Predictor.load(best, device="cuda").predict_proba([image])[0]
    on_cpu = Predictor.load(best, device="cpu").predict_proba([image])[0]
    assert on_gpu.shape == (90, 120)
    assert np.abs(on_gpu - on_cpu).max() < 1e-3


def test_upload_and_constant_give_the_values():
    from dermaseg.upload import constant

    values = torch.arange(6, dtype=torch.float32)
    assert torch.equal(upload(values, "cuda").cpu(), values)
    cached = constant((1.0, 2.0, 3.0), torch.device("cuda"), (3, 1, 1))
    assert cached.device.type == "cuda" and cached.shape == (3, 1, 1)
    assert cached is constant([1, 2, 3], "cuda", (3, 1, 1))
