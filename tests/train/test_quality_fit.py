"""`dermaseg train` ends by fitting the mask quality estimate on its validation images and
storing it in best.ckpt; with too few validation images it says so and stores none."""

from __future__ import annotations

import pytest

from dermaseg.checkpoint import load_model
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.train.runner import train
from helpers.training import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_fits_the_estimate_on_its_validation_images(tmp_path, capsys):
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    synth_dataset(20, raw, seed=5, options=SynthOptions(min_side=48, max_side=72),
                  progress=False)
    prepare_dataset(raw, prepared, size=48, val=0.3, test=0.0, seed=0, workers=1,
                    progress=False)
    summary = train(tiny("train.max_epochs=1"), prepared, tmp_path / "run", progress=False)
    fitted = summary["quality_estimate"]
    assert fitted["images"] == 6 and fitted["split"] == "val" and fitted["samples"] == 48
    _, meta = load_model(tmp_path / "run" / "best.ckpt")
    assert meta.quality is not None and meta.quality.fitted_on == fitted
    assert "quality estimate: stored in" in capsys.readouterr().err


def test_too_few_validation_images_leave_the_model_without_estimate(tiny_prepared, tmp_path,
                                                                     capsys):
    summary = train(tiny("train.max_epochs=1"), tiny_prepared, tmp_path / "run",
                    progress=False)
    assert "quality_estimate" not in summary
    assert load_model(tmp_path / "run" / "best.ckpt")[1].quality is None
    assert "quality estimate not fitted: 4 validation images" in capsys.readouterr().err
