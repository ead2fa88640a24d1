"""What a first-time user of the README trips over: the wrong folder, file or name given to a
command must be answered with a message that says what was given and what to give instead."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers.badinputs import run_cli


@pytest.fixture(scope="module")
def prep(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("walk") / "prep"
    code, output = run_cli("data", "prepare", synth_dir, "-o", out, "--size", "32", "-j", "1")
    assert code == 0, output
    return out


@pytest.mark.parametrize("command", ["check", "prepare"])
def test_data_commands_name_a_prepared_folder_given_for_raw(prep, tmp_path, command):
    extra = ["-o", tmp_path / "again"] if command == "prepare" else []
    code, output = run_cli("data", command, prep, *extra)
    assert code == 2 and "Traceback" not in output, output
    assert f"{prep}: a prepared dataset" in output and "--data" in output
    assert not (tmp_path / "again").exists()


def test_predict_names_a_prepared_folder_and_points_to_evaluate(prep, tiny_ckpt, tmp_path):
    code, output = run_cli("predict", tiny_ckpt, prep, "-o", tmp_path / "masks", "--quiet")
    assert code == 2 and "a prepared dataset" in output, output
    assert f"dermaseg evaluate MODEL --data {prep}" in output


def test_evaluate_unknown_split_lists_the_splits_there(prep, tiny_ckpt, tmp_path):
    code, output = run_cli("evaluate", tiny_ckpt, "--data", prep, "--split", "tset",
                           "-o", tmp_path / "eval", "--quiet")
    assert code == 2 and "split 'tset' has no items" in output, output
    assert "train (" in output and "val (" in output and "test (" in output
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_run_folder_given_as_model_names_its_checkpoint(tiny_ckpt, synth_dir, tmp_path,
                                                          command):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    shutil.copy(tiny_ckpt, run / "best.ckpt")
    args = [synth_dir, "-o", tmp_path / "masks"] if command == "predict" else []
    code, output = run_cli(command, run, *args)
    assert code == 1 and "Traceback" not in output, output
    assert f"{run}: a folder" in output and f"e.g. {run / 'best.ckpt'}" in output


def test_a_recipe_name_typo_suggests_the_recipe(prep, tmp_path):
    code, output = run_cli("train", "--config", "cpu_smal", "--data", prep,
                           "-o", tmp_path / "run")
    assert code == 2 and "no such recipe file, nor a shipped recipe" in output, output
    assert "did you mean cpu_small?" in output
    assert "deeplabv3_resnet50_isic" in output and not (tmp_path / "run").exists()
    mine = tmp_path / "recipes"
    mine.mkdir()
    (mine / "fast.yaml").write_text("train:\n  max_epochs: 1\n")
    code, output = run_cli("train", "--config", mine / "fats.yaml", "--data", prep,
                           "-o", tmp_path / "run")
    assert code == 2 and f"did you mean {mine / 'fast.yaml'}?" in output, output
    assert f"recipes in {mine}: fast.yaml" in output and not (tmp_path / "run").exists()


def test_train_minutes_is_the_time_budget(prep, tmp_path):
    code, output = run_cli("train", "--config", "cpu_small", "--data", prep,
                           "-o", tmp_path / "run", "--minutes", "0")
    assert code != 0 and "train.max_minutes" in output and "Traceback" not in output, output
    assert not (tmp_path / "run").exists()


def test_export_calib_given_a_file_says_so(tiny_ckpt, synth_dir, tmp_path):
    image = synth_dir / "synth_0001.jpg"
    code, output = run_cli("export", tiny_ckpt, "--int8", "--calib", image,
                           "-o", tmp_path / "m.onnx")
    assert code == 2 and f"--calib {image}: a file, not a folder" in output, output
    assert "no such folder" not in output


def test_int8_on_synthetic_calibration_says_how_to_use_your_images(tiny_ckpt, tmp_path):
    code, output = run_cli("export", tiny_ckpt, "--int8", "-o", tmp_path / "m.onnx",
                           "--calib-count", "4", "--holdout", "2", "--repeats", "1")
    assert code == 0, output
    assert "calibrated on synthetic images; pass --calib" in output
