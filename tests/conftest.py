"""Shared fixtures: synthetic dermoscopy data made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermaseg.data.synth import SynthOptions, synth_dataset


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A folder of 12 synthetic pairs (ISIC flat layout, 120-200 px, seed 0). Do not modify it:
    copy it (shutil.copytree) when a test needs to change files."""
    folder = tmp_path_factory.mktemp("synth")
    synth_dataset(
        12, folder, seed=0, options=SynthOptions(min_side=120, max_side=200), progress=False
    )
    return folder


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, synth_dir) -> Path:
    """An untrained resnet18 DeepLab checkpoint at 64 px (seed 0) whose threshold is the median
    probability on synth_0001.jpg, so its masks hold both lesion and skin. For geometry, I/O
    and metric-plumbing tests; no training."""
    import numpy as np
    import torch
    from PIL import Image

    from dermaseg.checkpoint import save_checkpoint
    from dermaseg.config import Config
    from dermaseg.infer.predictor import Predictor
    from dermaseg.infer.torch_backend import TorchBackend
    from dermaseg.model_meta import ModelMeta
    from dermaseg.models.factory import build_model

    config = Config().updated({"model.backbone": "resnet18", "model.aspp_channels": 16,
                               "data.image_size": 64})
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    meta = ModelMeta.from_config(config)
    image = np.asarray(Image.open(synth_dir / "synth_0001.jpg").convert("RGB"))
    prob = Predictor(TorchBackend(model, torch.device("cpu")), meta).predict_proba([image])[0]
    meta.threshold = float(np.median(prob))
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    """The training tests' prepared dataset (tests/helpers/training.py), made once per module."""
    from helpers.training import prepare_small

    return prepare_small(tmp_path_factory)


@pytest.fixture(scope="module")
def one_thread():
    """Training tests: one torch thread (stable timings on 2 cores), warnings silenced."""
    import warnings

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)
