"""A tiny DeepLab briefly fitted on synthetic lesions, for tests that need masks that mean
something (an untrained model's probabilities sit near 0.5, so its masks are noise)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from dermaseg.checkpoint import save_checkpoint
from dermaseg.config import Config
from dermaseg.data.synth import SynthOptions, synth_pair
from dermaseg.model_meta import ModelMeta
from dermaseg.models.factory import build_model


def synth_images(n: int, seed: int, width: int = 96, height: int = 80):
    """n synthetic (image HxWx3 uint8, mask HxW bool) pairs."""
    rng = np.random.default_rng(seed)
    pairs = [synth_pair(rng, width, height, SynthOptions()) for _ in range(n)]
    return [(image, mask > 0) for image, mask in pairs]


def fitted_checkpoint(path: Path, arch: str = "deeplabv3", backbone: str = "resnet18",
                      size: int = 64, steps: int = 40, seed: int = 0) -> Path:
    """Train `arch`/`backbone` at `size` px for `steps` Adam steps on 16 synthetic pairs
    (letterboxed and normalised exactly like the Predictor) and save a checkpoint."""
    from dermaseg.preprocessing import Preprocessing

    torch.manual_seed(seed)
    config = Config().updated({"model.arch": arch, "model.backbone": backbone,
                               "data.image_size": size})
    meta = ModelMeta.from_config(config)
    model = build_model(config.model)
    prepare = Preprocessing.from_meta(meta)
    pairs = synth_images(16, seed)
    images = torch.from_numpy(np.stack([prepare(image)[0] for image, _ in pairs]))
    masks = []
    for image, mask in pairs:
        box = prepare(image)[1]
        canvas = np.zeros((size, size), np.float32)
        small = torch.nn.functional.interpolate(
            torch.from_numpy(mask[None, None].astype(np.float32)),
            size=(box.new_height, box.new_width), mode="nearest")[0, 0].numpy()
        canvas[box.pad_top:box.pad_top + box.new_height,
               box.pad_left:box.pad_left + box.new_width] = small
        masks.append(canvas)
    targets = torch.from_numpy(np.stack(masks))[:, None]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        index = torch.arange(8) + (step % 2) * 8
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(images[index]), targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(path, model.eval(), meta)
    return path


@functools.cache
def shared_fitted(arch: str = "deeplabv3") -> Path:
    """One fitted checkpoint per test session (trained on first use, removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="dermaseg-fitted-"))
    atexit.register(shutil.rmtree, folder, True)
    return fitted_checkpoint(folder / "fit.ckpt", arch=arch)


def calibrated_copy(folder: Path, data: Path, review_below: float | None = None) -> Path:
    """A copy of `shared_fitted()` in `folder` whose quality estimate is fitted on the pairs
    of `data` (as `dermaseg calibrate` does), optionally with another review threshold."""
    import dataclasses

    from dermaseg.checkpoint import write_meta
    from dermaseg.evaluation.calibrate import fit_quality
    from dermaseg.evaluation.evaluate import source_items
    from dermaseg.infer.predictor import Predictor

    checkpoint = Path(shutil.copy(shared_fitted(), folder / "fit.ckpt"))
    predictor = Predictor.load(checkpoint)
    items, _ = source_items(data, "test")
    estimator = fit_quality(predictor, items, {"data": str(data), "split": "all pairs"},
                            progress=False)
    if review_below is not None:
        estimator = dataclasses.replace(estimator, review_below=review_below)
    write_meta(checkpoint, predictor.meta.with_quality(estimator))
    return checkpoint
