"""Config, geometry, file I/O, checkpoint safety and the CLI's root behaviour."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dermaseg import __version__
from dermaseg.checkpoint import load_model, read_checkpoint, save_checkpoint
from dermaseg.config import Config, ModelConfig
from dermaseg.config_io import load_config
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import atomic_path, read_rgb
from dermaseg.geometry import Letterbox, letterbox_image, restore_probability
from dermaseg.model_meta import ModelMeta


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermaseg", *args], capture_output=True,
                          text=True, timeout=120)


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout
    result = run_cli("--help")
    assert result.returncode == 0 and "data" in result.stdout


def test_config_overrides_and_round_trip(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  backbone: resnet18\ndata:\n  image_size: 128\n")
    config = load_config(recipe, ["optim.lr=0.001", "model.atrous_rates=[1,2,3]"])
    assert config.model.backbone == "resnet18" and config.data.image_size == 128
    assert config.optim.lr == pytest.approx(1e-3) and config.model.atrous_rates == [1, 2, 3]
    saved = tmp_path / "saved.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


@pytest.mark.parametrize("text, field", [
    ("model:\n  backbonez: x\n", "backbonez"),
    ("optim:\n  lr: fast\n", "optim.lr"),
    ("model: [1, 2\n", "not valid YAML"),
])
def test_bad_config_names_field(tmp_path, text, field):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(DermasegError, match=field):
        load_config(recipe)


def test_override_mistakes_name_the_override_not_the_recipe(tmp_path):
    """`--set train.max_minute=1` was reported as an unknown field of the recipe file."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  seed: 1\n")
    cases = [("train.max_minute=1", "no field 'max_minute' in train; did you mean "
              "train.max_minutes?"),
             ("trian.seed=1", "no field 'trian' in the config; did you mean train?"),
             ("train.seed.x=1", "train.seed is a value, not a section"),
             ("train.seed", "expected section.key=value")]
    for item, words in cases:
        with pytest.raises(UsageError) as info:
            load_config(recipe, [item])
        assert str(info.value).startswith(f"--set {item}: ") and words in str(info.value)
        assert "r.yaml" not in str(info.value)


def test_default_config_is_the_tutorial():
    config = Config()
    assert (config.optim.name, config.optim.lr, config.data.batch_size) == ("adam", 1e-4, 8)
    assert config.train.early_stop_patience == 10 and config.optim.plateau_patience == 3


@pytest.mark.parametrize("height, width", [(300, 451), (451, 300), (64, 64), (1, 7)])
def test_letterbox_round_trip(height, width):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    canvas, box = letterbox_image(image, 128)
    assert canvas.shape == (128, 128, 3)
    assert max(box.new_height, box.new_width) == 128
    assert abs(box.new_height / box.new_width - height / width) < 0.1 or min(height, width) < 8
    prob = np.zeros((128, 128), np.float32)
    box.crop(prob)[...] = 1.0
    restored = restore_probability(prob, box)
    assert restored.shape == (height, width) and np.allclose(restored, 1.0)


def test_letterbox_mask_stays_binary():
    mask = Image.fromarray((np.indices((97, 61)).sum(0) % 7 == 0).astype(np.uint8) * 255)
    canvas, _ = letterbox_image(mask, 50, is_mask=True)
    assert set(np.unique(canvas)) <= {0, 255}
    assert Letterbox.fit(97, 61, 50).pad_top == 0


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_read_rgb_modes_and_errors(tmp_path):
    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        path = tmp_path / f"img_{mode.replace(';', '')}.png"
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        path = path.with_suffix(".jpg") if fmt == "JPEG" else path
        Image.new(mode, (9, 5)).save(path, format=fmt)
        assert read_rgb(path).shape == (5, 9, 3)
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    with pytest.raises(DermasegError, match="text.jpg"):
        read_rgb(bad)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/dermaseg_pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "dermaseg": {}, "x": _Exploit()}, path)
    with pytest.raises(DermasegError, match="refused"):
        read_checkpoint(path)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(DermasegError):
        read_checkpoint(raw)
    assert not os.path.exists("/tmp/dermaseg_pwned")


def test_checkpoint_weights_for_another_model_are_summarised(tmp_path):
    """The weights of a MobileNet DeepLab-v3 under a ResNet-18 DeepLab-v3+ config: counts and
    a few keys of each kind, not every key (it was a 23 KB message)."""
    from dermaseg.models.factory import build_model

    small = {"aspp_channels": 8, "decoder_channels": 8}
    other = build_model(ModelConfig(backbone="mobilenetv3_large_100", **small))
    config = Config(model=ModelConfig(arch="deeplabv3plus", backbone="resnet18", **small))
    path = tmp_path / "mixed.ckpt"
    save_checkpoint(path, other, ModelMeta.from_config(config))
    with pytest.raises(DermasegError) as info:
        load_model(path)
    message = str(info.value)
    assert "do not fit" in message and "deeplabv3plus, resnet18" in message
    assert "weights missing from the file" in message and "weights not in the model" in message
    assert len(message) < 1000, message


def test_old_checkpoint_training_settings_do_not_stop_inference(tmp_path):
    """A checkpoint's config may hold training settings this release refuses (written by an
    older one): inference loads it; the fields inference reads are still checked."""
    from helpers.fitted import fitted_checkpoint

    path = fitted_checkpoint(tmp_path / "old.ckpt", steps=1)
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["dermaseg"]["config"]
    saved["optim"]["scheduler"], saved["train"]["freeze_after_lr_drops"] = "cosine", 2
    saved["data"]["augment"]["brightness"] = 3.0
    torch.save(checkpoint, path)
    _, meta = load_model(path)
    assert meta.config.train.freeze_after_lr_drops == 2
    saved["model"]["aspp_channels"] = 0
    torch.save(checkpoint, path)
    with pytest.raises(DermasegError, match="model.aspp_channels: must be >= 1"):
        load_model(path)
