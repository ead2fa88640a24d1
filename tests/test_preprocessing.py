"""Colour constancy (`data.colour_constancy: shades_of_gray`) in the one network-input definition
(`dermaseg.preprocessing`): its numpy and torch forms, the formula, and every consumer applying
it from the model's config (training batches, Predictor, ONNX metadata, parity, calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dermaseg.config import Config
from dermaseg.config_io import INFERENCE_FIELDS, config_from_dict, load_config
from dermaseg.errors import DermasegError
from dermaseg.geometry import letterbox_image
from dermaseg.model_meta import ModelMeta
from dermaseg.preprocessing import Normalisation, Preprocessing, ShadesOfGray
from helpers.fitted import synth_images

SOG = {"data.colour_constancy": "shades_of_gray"}


def _config(**changes) -> Config:
    return Config().updated({"model.backbone": "resnet18", "model.aspp_channels": 16,
                             "data.image_size": 64, **changes})


def _reference(hwc: np.ndarray, power: float = 6.0) -> np.ndarray:
    """The ISIC 2019 reference code's Shades of Gray (float64, unrounded, clipped)."""
    image = hwc.astype(np.float64)
    rgb = np.power(np.mean(np.power(image, power), (0, 1)), 1 / power)
    rgb = rgb / np.sqrt(np.sum(rgb ** 2))
    return np.clip(image / (rgb * np.sqrt(3)), 0, 255)


def _explicit(image: np.ndarray, config: Config) -> np.ndarray:
    """The network input computed step by step: letterbox, reference colours, normalise."""
    canvas, _ = letterbox_image(Image.fromarray(image), config.data.image_size)
    corrected = _reference(canvas, config.data.colour_constancy_p).transpose(2, 0, 1)
    mean = np.asarray(config.data.mean)[:, None, None] * 255
    std = np.asarray(config.data.std)[:, None, None] * 255
    return ((corrected - mean) / std).astype(np.float32)


def _random_batch(seed: int = 0, n: int = 4, side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cast = rng.uniform(0.5, 1.0, (n, 3, 1, 1))
    return (rng.integers(0, 256, (n, 3, side, side)) * cast).astype(np.uint8)


def test_numpy_and_torch_forms_give_the_same_numbers():
    batch = _random_batch()
    sog = ShadesOfGray()
    on_numpy = sog.array(batch)
    on_torch = sog.tensor(torch.from_numpy(batch))
    assert on_numpy.dtype == np.float32 and on_torch.dtype == torch.float32
    # float64 statistics, float32 gains: equal here (in general up to a last bit of a sum)
    np.testing.assert_allclose(on_torch.numpy(), on_numpy, rtol=0, atol=1e-4)
    assert np.array_equal(on_torch.numpy(), on_numpy)
    last = sog.tensor(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(last.numpy(), on_numpy)
    single = sog.array(batch[1])  # one (3, H, W) image: as in the batch
    assert np.array_equal(single, on_numpy[1])


def test_it_is_the_reference_formula():
    batch = _random_batch(seed=1)
    for power in (6.0, 2.0):
        ours = ShadesOfGray(power).array(batch)
        for image, corrected in zip(batch, ours, strict=True):
            theirs = _reference(image.transpose(1, 2, 0), power).transpose(2, 0, 1)
            np.testing.assert_allclose(corrected, theirs, rtol=1e-5, atol=1e-3)


def test_a_colour_cast_grey_card_comes_out_grey():
    card = np.full((3, 40, 50), 150.0) * np.array([1.3, 1.0, 0.7])[:, None, None]
    corrected = ShadesOfGray().array(np.round(card).astype(np.uint8))
    means = corrected.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(means, means.mean(), rtol=1e-6)
    # the grey has the estimate's root-mean-square: sqrt((195² + 150² + 105²) / 3)
    assert means[0] == pytest.approx(np.sqrt((195**2 + 150**2 + 105**2) / 3), rel=1e-6)


def test_zero_padding_does_not_change_the_gains():
    content = _random_batch(seed=2, n=1, side=30)[0]
    padded = np.zeros((3, 64, 64), np.uint8)
    padded[:, 17:47, 5:35] = content
    corrected = ShadesOfGray().array(padded)
    np.testing.assert_allclose(corrected[:, 17:47, 5:35], ShadesOfGray().array(content),
                               rtol=1e-6)
    assert not corrected[:, :17].any() and not corrected[:, 47:].any()  # padding stays 0


@pytest.mark.parametrize("colour", [(0, 0, 0), (200, 0, 0), (0, 9, 30)])
def test_an_image_with_a_black_channel_is_left_as_it_is(colour):
    image = np.broadcast_to(np.array(colour, np.uint8)[:, None, None], (3, 8, 8)).copy()
    for corrected in (ShadesOfGray().array(image),
                      ShadesOfGray().tensor(torch.from_numpy(image)).numpy()):
        assert np.isfinite(corrected).all()
        assert np.array_equal(corrected, image.astype(np.float32))


def test_bad_inputs_and_settings_are_named():
    with pytest.raises(DermasegError, match="data.colour_constancy_p: expected 1..16, got 0.5"):
        ShadesOfGray(0.5)
    with pytest.raises(DermasegError, match=r"colour constancy: expected uint8 RGB"):
        ShadesOfGray().array(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(DermasegError, match=r"colour constancy: expected uint8 RGB"):
        ShadesOfGray().tensor(torch.zeros(2, 4, 4, dtype=torch.uint8))
    with pytest.raises(DermasegError, match="data.colour_constancy: must be none or "
                                            "shades_of_gray, got 'grey'"):
        _config(**{"data.colour_constancy": "grey"})
    with pytest.raises(DermasegError, match=r"data.colour_constancy_p: must be in \[1, 16\]"):
        load_config("cpu_small", ["data.colour_constancy_p=20"])


def test_none_is_the_default_and_leaves_the_input_as_before():
    config = _config()
    assert (config.data.colour_constancy, config.data.colour_constancy_p) == ("none", 6.0)
    prep = Preprocessing.from_config(config)
    assert prep.colours is None
    image = synth_images(1, seed=3, width=70, height=50)[0][0]
    canvas, _ = prep.letterbox(image)
    meta = ModelMeta.from_config(config)
    before = Normalisation.of(meta.mean, meta.std).array(canvas.transpose(2, 0, 1))
    assert prep(image)[0].tobytes() == before.tobytes()
    batch = torch.from_numpy(canvas.transpose(2, 0, 1).copy())[None]
    assert prep.normalise_tensor(batch).numpy().tobytes() == before[None].tobytes()
    # an older model's config has no colour_constancy: it reads as none
    saved = meta.to_dict()
    del saved["config"]["data"]["colour_constancy"], saved["config"]["data"]["colour_constancy_p"]
    assert Preprocessing.from_meta(ModelMeta.from_dict(saved, "old.ckpt")).colours is None


def test_the_setting_survives_the_model_metadata():
    config = _config(**SOG, **{"data.colour_constancy_p": 4})
    saved = json.loads(json.dumps(ModelMeta.from_config(config).to_dict()))
    meta = ModelMeta.from_dict(saved, "m.onnx")
    assert meta.config.data.colour_constancy == "shades_of_gray"
    assert Preprocessing.from_meta(meta).colours == ShadesOfGray(4.0)
    assert Preprocessing.from_meta(meta) == Preprocessing.from_config(config)
    assert {"data.colour_constancy", "data.colour_constancy_p"} <= set(INFERENCE_FIELDS)
    saved["config"]["data"]["colour_constancy"] = "grey"  # an inference field: still checked
    with pytest.raises(DermasegError, match="m.onnx: config: data.colour_constancy: must be"):
        config_from_dict(saved["config"], "m.onnx: config", INFERENCE_FIELDS)


def test_training_batches_and_the_predictor_feed_the_network_the_same_numbers():
    from dermaseg.infer.predictor import Predictor
    from dermaseg.train.device_batches import TrainingBatches

    config = _config(**SOG)
    images = [image for image, _ in synth_images(3, seed=4, width=90, height=64)]
    seen: list[np.ndarray] = []

    def backend(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return np.zeros((len(batch), 1, *batch.shape[2:]), np.float32)

    Predictor(backend, ModelMeta.from_config(config)).predict_proba(images)  # type: ignore[arg-type]
    explicit = np.stack([_explicit(image, config) for image in images])
    np.testing.assert_allclose(seen[0], explicit, rtol=0, atol=2e-5)
    # training: the (augmented) uint8 canvases, corrected and normalised on the device
    canvases = np.stack([Preprocessing.from_config(config).letterbox(image)[0]
                         for image in images]).transpose(0, 3, 1, 2)
    batch = (torch.from_numpy(canvases.copy()), torch.zeros(3, 1, 64, 64, dtype=torch.uint8),
             torch.arange(3))
    trained_on, _, _ = TrainingBatches(config, None).after_transfer(batch, torch.device("cpu"))
    np.testing.assert_array_equal(trained_on.numpy(), seen[0])


def test_export_parity_and_int8_calibration_prepare_with_it():
    from dermaseg.export.int8 import ImageCalibrationReader
    from dermaseg.export.parity import parity_batches

    config = _config(**SOG)
    meta = ModelMeta.from_config(config)
    images = [image for image, _ in synth_images(2, seed=6, width=80, height=60)]
    explicit = np.stack([_explicit(image, config) for image in images])
    np.testing.assert_allclose(parity_batches(images, meta)[0], explicit, rtol=0, atol=2e-5)
    reader = ImageCalibrationReader(images, meta, progress=False)
    first = reader.get_next()
    assert first is not None
    np.testing.assert_allclose(next(iter(first.values()))[0], explicit[0], rtol=0, atol=2e-5)


def test_an_onnx_export_carries_it_to_the_predictor(tmp_path):
    from dermaseg.export.onnx import export_onnx
    from dermaseg.infer.onnx_backend import check_onnx
    from dermaseg.infer.predictor import Predictor
    from dermaseg.models.factory import build_model

    config = _config(**SOG)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    path = export_onnx(model, ModelMeta.from_config(config), tmp_path / "m.onnx",
                       exporter="legacy")
    assert check_onnx(path).config.data.colour_constancy == "shades_of_gray"
    predictor = Predictor.load(path)
    assert predictor.preprocessing.colours == ShadesOfGray(6.0)
    image = synth_images(1, seed=8, width=70, height=90)[0][0]
    network_input = predictor.preprocessing(image)[0]
    np.testing.assert_allclose(network_input, _explicit(image, config), rtol=0, atol=2e-5)


def test_the_model_card_names_it_only_when_on():
    from dermaseg.export.card import card_text

    plain = card_text("m", ModelMeta.from_config(_config()), None, None, "apache-2.0")
    corrected = card_text("m", ModelMeta.from_config(_config(**SOG)), None, None, "apache-2.0")
    assert "colour constancy" not in plain
    assert "- colour constancy: shades_of_gray (p = 6) on the padded input" in corrected
