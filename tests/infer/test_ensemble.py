"""Ensembles (`predict`/`evaluate` with MODEL1,MODEL2,...): the mean of the members'
probabilities, thresholded once; members that disagree, and serve/export, are refused."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermaseg.checkpoint import save_checkpoint
from dermaseg.config import Config
from dermaseg.errors import UsageError
from dermaseg.fileio import read_rgb, read_rgb_reduced
from dermaseg.infer.ensemble import Ensemble, load_predictor, split_models
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.torch_backend import TorchBackend
from dermaseg.infer.tta import TTAConfig
from dermaseg.model_meta import ModelMeta
from dermaseg.models.factory import build_model
from helpers.badinputs import run_cli

SIZES = [(101, 67), (37, 123), (1, 9), (64, 64)]


def _untrained(seed: int, size: int = 64):
    """An untrained resnet18 DeepLab (ASPP 16 channels) at `size` px and its ModelMeta."""
    config = Config().updated({"model.backbone": "resnet18", "model.aspp_channels": 16,
                               "data.image_size": size})
    torch.manual_seed(seed)
    return build_model(config.model).eval(), ModelMeta.from_config(config)


@pytest.fixture(scope="module")
def models(tmp_path_factory, synth_dir) -> dict[str, Path]:
    """a.ckpt and b.ckpt: two different untrained models (seeds 0 and 1) at 64 px sharing a
    threshold, the median of their mean probability on synth_0001 (masks hold both classes);
    size.ckpt (96 px), threshold.ckpt, mean.ckpt and colours.ckpt (colour constancy) each
    differ from a.ckpt in one field."""
    folder = tmp_path_factory.mktemp("ensemble")
    (net_a, meta), (net_b, _) = _untrained(0), _untrained(1)
    image = read_rgb(synth_dir / "synth_0001.jpg")
    probs = [Predictor(TorchBackend(net, torch.device("cpu")), meta).predict_proba([image])[0]
             for net in (net_a, net_b)]
    meta.threshold = float(np.median((probs[0] + probs[1]) / 2))
    paths = {name: folder / f"{name}.ckpt"
             for name in ("a", "b", "size", "threshold", "mean", "colours")}
    save_checkpoint(paths["a"], net_a, meta)
    save_checkpoint(paths["b"], net_b, meta)
    net_c, meta_c = _untrained(2, size=96)
    save_checkpoint(paths["size"], net_c, dataclasses.replace(meta_c, threshold=meta.threshold))
    save_checkpoint(paths["threshold"], net_b, dataclasses.replace(meta, threshold=0.25))
    save_checkpoint(paths["mean"], net_b, dataclasses.replace(meta, mean=[0.5, 0.5, 0.5]))
    corrected = meta.config.updated({"data.colour_constancy": "shades_of_gray"})
    save_checkpoint(paths["colours"], net_b, dataclasses.replace(meta, config=corrected))
    return paths


def _pair(models) -> str:
    return f"{models['a']},{models['b']}"


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR))


def _member_mean(models, images, tta=None, originals=None) -> list[np.ndarray]:
    """The members' probabilities, each computed by its own Predictor, then averaged."""
    a = Predictor.load(models["a"], tta=tta).predict_proba(images, originals)
    b = Predictor.load(models["b"], tta=tta).predict_proba(images, originals)
    return [(pa + pb) / 2 for pa, pb in zip(a, b, strict=True)]


@pytest.mark.parametrize("tta", [None, TTAConfig(), TTAConfig(scales=(0.75, 1.0))],
                         ids=["plain", "flips", "flips+scales"])
def test_ensemble_probability_is_the_mean_of_the_members(models, tta):
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    ensemble = load_predictor(_pair(models), tta=tta, batch_size=3)  # batches of 3 then 1
    assert isinstance(ensemble, Ensemble)
    got = ensemble.predict_proba(images)
    for prob, expected, (height, width) in zip(got, _member_mean(models, images, tta), SIZES,
                                               strict=True):
        assert prob.shape == expected.shape == (height, width)
        np.testing.assert_allclose(prob, expected, atol=1e-6, rtol=0)
    assert not np.allclose(got[0], Predictor.load(models["a"]).predict_proba(images[:1])[0],
                           atol=1e-3)  # the members really differ


def test_an_ensemble_with_another_tta_stays_an_ensemble(models):
    """Predictor.with_tta (the service's ?tta=true) made a single-model Predictor without a
    backend out of an Ensemble."""
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    ensemble = load_predictor(_pair(models)).with_tta(TTAConfig())
    assert isinstance(ensemble, Ensemble) and ensemble.tta == TTAConfig()
    for prob, expected in zip(ensemble.predict_proba(images),
                              _member_mean(models, images, TTAConfig()), strict=True):
        np.testing.assert_allclose(prob, expected, atol=1e-6, rtol=0)


def test_one_model_is_unchanged_and_a_one_member_ensemble_equals_it(models):
    images = [_image(h, w) for h, w in SIZES]
    single = Predictor.load(models["a"], batch_size=2)
    loaded = load_predictor(str(models["a"]), batch_size=2)
    assert type(loaded) is Predictor
    one = Ensemble([Predictor.load(models["a"], batch_size=2)], [str(models["a"])])
    expected = single.predict_proba(images)
    for prob, prob_loaded, prob_one in zip(expected, loaded.predict_proba(images),
                                           one.predict_proba(images), strict=True):
        assert np.array_equal(prob, prob_loaded) and np.array_equal(prob, prob_one)
        assert np.array_equal(single.to_mask(prob), one.to_mask(prob_one))


def test_mixed_checkpoint_and_onnx_members(models, tmp_path):
    from dermaseg.checkpoint import load_model
    from dermaseg.export.onnx import export_onnx

    net, meta = load_model(models["b"])
    onnx_path = export_onnx(net, meta, tmp_path / "b.onnx", exporter="legacy")
    images = [_image(77, 45), _image(30, 90, 1)]
    mixed = load_predictor(f"{models['a']},{onnx_path}").predict_proba(images)
    for prob, expected in zip(mixed, _member_mean(models, images), strict=True):
        np.testing.assert_allclose(prob, expected, atol=1e-4)


def test_cli_predict_with_two_models_writes_the_thresholded_mean(models, synth_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = ["synth_0001", "synth_0002", "synth_0005"]
    for name in names:
        shutil.copy(synth_dir / f"{name}.jpg", inputs)
    code, output = run_cli("predict", _pair(models), inputs, "-o", tmp_path / "out", "--tta",
                           "--quiet")
    assert code == 0, output
    assert str(models["a"]) in output and str(models["b"]) in output and "ensemble of 2" in output
    # as predict reads them: JPEGs at least twice the input size are decoded reduced
    decoded = [read_rgb_reduced(inputs / f"{name}.jpg", 64) for name in names]
    means = _member_mean(models, [d[0] for d in decoded], TTAConfig(), [d[1] for d in decoded])
    threshold = Predictor.load(models["a"]).threshold
    for name, mean in zip(names, means, strict=True):
        written = np.asarray(Image.open(tmp_path / "out" / f"{name}_segmentation.png")) > 0
        expected = mean > threshold
        assert 0 < expected.mean() < 1  # both lesion and skin: a real comparison
        certain = np.abs(mean - threshold) > 1e-6  # float rounding may only flip ties
        assert np.array_equal(written[certain], expected[certain])


def test_cli_evaluate_with_two_models_names_both(models, synth_dir):
    code, output = run_cli("evaluate", _pair(models), "--data", synth_dir, "--quiet")
    assert code == 0, output
    report = models["a"].parent / f"eval-{synth_dir.name}-ensemble"  # the members' folder
    text = (report / "report.md").read_text()
    assert str(models["a"]) in text and str(models["b"]) in text
    assert (report / "metrics.json").is_file()


@pytest.mark.parametrize("other, field", [("size", "image_size"), ("threshold", "threshold"),
                                          ("mean", "mean"),
                                          ("colours", "data.colour_constancy")])
def test_members_that_disagree_are_refused_naming_both(models, synth_dir, tmp_path, other,
                                                       field):
    text = f"{models['a']},{models[other]}"
    with pytest.raises(UsageError, match=field) as refused:
        load_predictor(text)
    assert str(models["a"]) in str(refused.value) and str(models[other]) in str(refused.value)
    code, output = run_cli("predict", text, synth_dir, "-o", tmp_path / "out", "--quiet")
    assert code == 2 and str(models[other]) in output and field in output, output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, output = run_cli("evaluate", text, "--data", synth_dir, "-o", tmp_path / "ev")
    assert code == 2 and str(models[other]) in output, output


@pytest.mark.parametrize("command", [["serve"], ["export", "--format", "onnx"]])
def test_serve_and_export_refuse_a_comma_list(models, tmp_path, command):
    code, output = run_cli(command[0], _pair(models), *command[1:])
    assert code == 2, output
    assert "predict" in output and "evaluate" in output and "Traceback" not in output


def test_missing_or_repeated_members_are_clear_errors(models, tmp_path):
    missing = tmp_path / "fold3" / "best.ckpt"
    with pytest.raises(UsageError, match="no such model file") as refused:
        load_predictor(f"{models['a']},{missing}")
    assert str(missing) in str(refused.value)
    with pytest.raises(UsageError, match="listed twice"):
        split_models(f"{models['a']},{models['b']},{models['a']}")
    assert split_models(f" {models['a']} , {models['b']}, ") == [str(models["a"]),
                                                                  str(models["b"])]
    odd = tmp_path / "a,b.ckpt"  # a file whose own name holds a comma is one model
    shutil.copy(models["a"], odd)
    assert type(load_predictor(odd)) is Predictor
