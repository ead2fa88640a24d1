"""Every command that takes files, run through the real CLI (`dermaseg.cli.main`) over the
bad-input corpus of tests/helpers/badinputs.py: each case is converted and used, or refused with a
message naming the file; never a traceback, never a half-written output, never a hang."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.data.discover import display_path
from helpers.badinputs import build_corpus, leftovers, run_cli

TRAIN_TINY = ["-s", "model.arch=deeplabv3plus", "-s", "model.backbone=mobilenetv3_large_100",
              "-s", "model.aspp_channels=16", "-s", "model.decoder_channels=16",
              "-s", "data.image_size=48", "-s", "data.batch_size=4", "-s", "data.num_workers=0",
              "-s", "train.max_epochs=1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared, loaded machine several threads fight and run slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("prepared") / "prep"
    code, output = run_cli("data", "prepare", root / "raw", "-o", out, "--size", "32", "-j", "1")
    return out, code, output


@pytest.fixture(scope="module")
def predicted(corpus, tiny_ckpt, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("predicted") / "masks"
    code, output = run_cli("predict", tiny_ckpt, root / "raw", "-o", out, "--quiet")
    return out, code, output


def shown(path: Path, root: Path) -> str:
    return display_path(path.relative_to(root / "raw"))


def test_check_counts_the_pairs_prepare_uses(corpus, prepared):
    root, _ = corpus
    out, code, _ = prepared
    assert code == 0
    items = len(json.loads((out / "manifest.json").read_text())["items"])
    _, output = run_cli("data", "check", root / "raw", "--json", "-j", "1")
    assert json.loads(output[output.index("{"):])["usable_pairs"] == items


def test_check_names_every_bad_file_and_only_those(corpus):
    root, cases = corpus
    code, output = run_cli("data", "check", root / "raw", "-j", "1")
    assert code == 1 and "Traceback" not in output
    lines = output.splitlines()
    for case in cases:
        if case.kind is None:
            assert not [line for line in lines if shown(case.image, root) in line], case.name
            continue
        named = [line for line in lines if shown(case.bad, root) in line]
        assert any(line.startswith(case.kind) for line in named), (case.name, output)
    assert any(line.startswith("missing_mask") and "selfloop.jpg" in line for line in lines)
    code, output = run_cli("data", "check", root / "raw", "--json", "-j", "1")
    report = json.loads(output[output.index("{"):])
    assert code == 1 and report["pairs"] == len(cases)
    assert report["good_pairs"] == sum(case.kind is None for case in cases)
    assert report["usable_pairs"] == report["good_pairs"] + 1  # the 0/1 mask: prepare takes it


@pytest.mark.parametrize("folder,code,words", [
    ("nopairs", 1, ["no_pairs", "orphan_mask", "lonely_segmentation.png"]),
    ("empty", 1, ["no_pairs"]),
    ("absent", 2, ["absent: no such folder"]),
])
def test_check_folders_without_pairs(corpus, folder, code, words):
    root, _ = corpus
    result, output = run_cli("data", "check", root / folder)
    assert result == code and "Traceback" not in output
    assert all(word in output for word in words), output


def test_check_in_a_real_process_does_not_hang(corpus):
    root, _ = corpus
    done = subprocess.run([sys.executable, "-m", "dermaseg", "data", "check", root / "raw",
                           "-j", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "bomb.png" in done.stdout and "zero.jpg" in done.stdout


def test_prepare_converts_odd_images_and_skips_bad_ones(corpus, prepared):
    root, cases = corpus
    out, code, output = prepared
    assert code == 0 and "Traceback" not in output
    manifest = json.loads((out / "manifest.json").read_text())
    items = {item["id"]: item for item in manifest["items"]}
    assert set(items) == {case.id for case in cases if case.prepared}
    skipped = json.dumps(manifest["skipped"])
    for case in cases:
        if not case.prepared:
            assert json.dumps(display_path(case.bad))[1:-1] in skipped, case.name
            assert display_path(case.bad) in output or case.name in output
            continue
        item = items[case.id]
        assert (item["orig_width"], item["orig_height"]) == case.shown, case.name
        image, mask = np.load(out / item["image"]), np.load(out / item["mask"])
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 1}, case.name
    assert not leftovers(out)


def test_prepare_refuses_folders_without_pairs_and_unwritable_outputs(corpus, tmp_path):
    root, _ = corpus
    for folder in ("nopairs", "empty"):
        code, output = run_cli("data", "prepare", root / folder, "-o", tmp_path / folder)
        assert code == 1 and "no image/mask pair found" in output and "Traceback" not in output
        assert not (tmp_path / folder / "manifest.json").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = run_cli("data", "prepare", root / "raw", "-o", blocker, "-j", "1")
    assert code == 2 and "a-file: a file, not a folder" in output and "Traceback" not in output
    assert blocker.read_text() == "not a folder"  # refused before anything is written


def test_prepare_with_no_usable_pair_is_an_error_and_writes_nothing(corpus, tmp_path):
    root, cases = corpus
    source = tmp_path / "all-bad"
    source.mkdir()
    for case in cases:
        if case.name in ("zero", "text"):
            shutil.copy(case.image, source)
            shutil.copy(case.mask, source)
    out = tmp_path / "out"
    code, output = run_cli("data", "prepare", source, "-o", out, "-j", "1")
    assert code == 1 and "Traceback" not in output, output
    assert "error: " in output and "no usable pair: 2 skipped (unreadable 2)" in output
    assert "zero.jpg" in output and "text.jpg" in output
    assert not out.exists()


def test_predict_writes_a_mask_per_usable_image_and_names_the_rest(corpus, predicted):
    root, cases = corpus
    out, code, output = predicted
    assert code == 1 and "Traceback" not in output
    for case in cases:
        mask_file = out / f"{case.id}_segmentation.png"
        if not case.predictable:
            assert not mask_file.exists()
            assert [line for line in output.splitlines()
                    if "failed:" in line and display_path(case.image.name) in line], case.name
            continue
        with Image.open(mask_file) as mask:
            assert mask.mode == "L" and mask.size == case.shown, case.name
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert not leftovers(out)
    predictable = sum(case.predictable for case in cases)
    assert f"{predictable} written" in output


def test_predict_rerun_skips_done_masks_and_still_names_bad_inputs(corpus, predicted, tiny_ckpt):
    root, cases = corpus
    out, _, _ = predicted
    code, output = run_cli("predict", tiny_ckpt, root / "raw", "-o", out, "--quiet")
    predictable = sum(case.predictable for case in cases)
    assert code == 1 and f"0 written, {predictable} already there" in output
    assert "zero.jpg: empty file" in output and "bomb.png: image too large" in output


@pytest.mark.parametrize("inputs,code,message", [
    (["empty"], 2, "no images found"),
    (["absent.jpg"], 2, "absent.jpg: no such file or folder"),
    (["raw/zero.jpg", "raw/text.jpg"], 1, "2 input(s) could not be predicted"),
])
def test_predict_refusals(corpus, tiny_ckpt, tmp_path, inputs, code, message):
    root, _ = corpus
    result, output = run_cli("predict", tiny_ckpt, *[root / i for i in inputs],
                             "-o", tmp_path / "out", "--quiet")
    assert result == code and message in output and "Traceback" not in output
    assert not list((tmp_path / "out").glob("*.png"))
    if code == 2:  # nothing to predict: no output folder left behind
        assert not (tmp_path / "out").exists()


def test_predict_refuses_a_named_pipe_instead_of_blocking(corpus, tiny_ckpt, tmp_path):
    root, _ = corpus
    pipe = tmp_path / "lesion.jpg"
    os.mkfifo(pipe)  # opening it for reading would wait for a writer for ever
    code, output = run_cli("predict", tiny_ckpt, pipe, root / "raw" / "good_0.jpg",
                           "-o", tmp_path / "out", "--quiet")
    assert code == 1 and "lesion.jpg: not a regular file" in output, output
    assert (tmp_path / "out" / "good_0_segmentation.png").is_file()


def test_predict_into_a_file_is_a_clear_error(corpus, tiny_ckpt, tmp_path):
    root, _ = corpus
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, output = run_cli("predict", tiny_ckpt, root / "raw" / "good_0.jpg", "-o", blocker)
    assert code == 1 and "a-file: not a folder (cannot create the output folder there)" in output


def test_evaluate_on_the_prepared_corpus_reads_every_converted_source(
        corpus, prepared, tiny_ckpt, tmp_path):
    out, _, _ = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        code, output = run_cli("evaluate", tiny_ckpt, "--data", out, "--split", split,
                               "-o", tmp_path / split, "--quiet")
        assert code == 0 and "Traceback" not in output, output
        scored = json.loads((tmp_path / split / "metrics.json").read_text())["per_image"]
        assert len(scored) == manifest["counts"][split]


def test_evaluate_names_the_bad_file_and_writes_nothing(corpus, tiny_ckpt, predicted, tmp_path):
    root, cases = corpus
    code, output = run_cli("evaluate", tiny_ckpt, "--data", root / "raw", "-o",
                           tmp_path / "raw-eval", "--quiet")
    assert code == 1 and "Traceback" not in output
    unscorable = [c.bad for c in cases
                  if c.kind in ("unreadable", "size_mismatch", "mask_not_single_channel")]
    assert f"{len(unscorable)} of " in output, output
    missing = [display_path(bad) for bad in unscorable if display_path(bad) not in output]
    assert not missing, output
    assert not (tmp_path / "raw-eval").exists()
    masks, _, _ = predicted
    good = [c for c in cases if c.prepared and c.kind is None]
    for case in [c for c in cases if c.kind in ("size_mismatch", "mask_not_single_channel")] + [
            c for c in cases if c.name == "mask01"]:
        truth, pred = tmp_path / case.name / "truth", tmp_path / case.name / "pred"
        truth.mkdir(parents=True)
        pred.mkdir()
        for item in [*good, case]:
            name = f"{item.id}_segmentation.png"
            os.symlink(item.image.with_name(name), truth / name)
            (pred / name).write_bytes((masks / name).read_bytes())
        wrong = truth / f"{case.id}_segmentation.png"
        code, output = run_cli("evaluate", "--pred", pred, "--truth", truth, "-o",
                               tmp_path / case.name / "eval", "--quiet")
        assert "Traceback" not in output
        if case.name == "mask01":  # scored as stored, like the official scorer
            assert code == 0
            continue
        assert code == 1 and display_path(wrong.name) in output, output
        assert not (tmp_path / case.name / "eval").exists()


def test_evaluate_refuses_a_truncated_prediction(corpus, predicted, tmp_path):
    root, cases = corpus
    masks, _, _ = predicted
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    case = next(c for c in cases if c.name == "good_0")
    name = f"{case.id}_segmentation.png"
    (truth / name).write_bytes(case.mask.read_bytes())
    (pred / name).write_bytes((masks / name).read_bytes()[:60])
    code, output = run_cli("evaluate", "--pred", pred, "--truth", truth, "-o", tmp_path / "e")
    assert code == 1 and f"{name}: not a readable mask" in output and "Traceback" not in output


@pytest.mark.parametrize("damage,message", [
    ("yaml", "bad.yaml"), ("key", "unknown field(s) colour"), ("data", "no such folder"),
    ("manifest-json", "manifest.json: corrupt manifest"),
    ("manifest-items", "manifest.json: corrupt manifest"),
    ("npy-truncated", "corrupt prepared file"), ("npy-missing", "missing prepared file"),
])
def test_train_names_the_bad_config_or_data(prepared, tmp_path, damage, message):
    source, _, _ = prepared
    data = tmp_path / "data"
    shutil.copytree(source, data)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: [unclosed\n" if damage == "yaml" else
                      "model:\n  colour: red\n" if damage == "key" else "train:\n  seed: 1\n")
    manifest = data / "manifest.json"
    first = json.loads(manifest.read_text())["items"][0]
    if damage == "manifest-json":
        manifest.write_text(manifest.read_text()[:100])
    elif damage == "manifest-items":
        manifest.write_text(json.dumps({"size": 32, "items": "nothing"}))
    elif damage == "npy-truncated":
        for kind in ("image", "mask"):
            path = data / first[kind]
            path.write_bytes(path.read_bytes()[:90])
    elif damage == "npy-missing":
        for kind in ("image", "mask"):
            (data / first[kind]).unlink()
    args = ["train", "-c", recipe, "-d", tmp_path / "absent" if damage == "data" else data,
            "-o", tmp_path / "run", "-q", *TRAIN_TINY]
    code, output = run_cli(*args)
    assert code in (1, 2) and message in output and "Traceback" not in output, output
    assert not (tmp_path / "run" / "last.ckpt").exists()
    assert not leftovers(tmp_path / "run")


BAD_SETTINGS = [
    ("data.image_size=0", "data.image_size: must be >= 1"),
    ("data.batch_size=0", "data.batch_size: must be >= 1"),
    ("data.num_workers=-2", "data.num_workers: must be"),
    ("data.mean=[0.5,0.5]", "data.mean: must be 3 values"),
    ("data.std=[0.2,0.2,0]", "data.std: must be 3 values"),
    ("data.augment.hflip=1.5", "data.augment.hflip: must be a probability in [0, 1]"),
    ("data.augment.vflip=-0.1", "data.augment.vflip: must be a probability"),
    ("data.augment.elastic_p=2", "data.augment.elastic_p: must be a probability"),
    ("data.augment.rotate90=1.01", "data.augment.rotate90: must be a probability"),
    ("data.augment.brightness=1.5", "data.augment.brightness: must be in [0, 1]"),
    ("data.augment.contrast=-0.1", "data.augment.contrast: must be in [0, 1]"),
    ("data.augment.elastic_alpha=-1", "data.augment.elastic_alpha: must be >= 0"),
    ("data.augment.elastic_sigma=0", "data.augment.elastic_sigma: must be > 0"),
    ("data.augment.scale=1", "data.augment.scale: must be in [0, 0.9]"),
    ("data.augment.hue=-0.1", "data.augment.hue: must be in [0, 0.5]"),
    ("data.augment.hair_p=2", "data.augment.hair_p: must be a probability"),
    ("data.augment.blur_sigma=0", "data.augment.blur_sigma: must be"),
    ("model.aspp_channels=0", "model.aspp_channels: must be >= 1"),
    ("model.aspp_dropout=1", "model.aspp_dropout: must be in [0, 1)"),
    ("model.freeze_stages=-2", "model.freeze_stages: must be >= 0"),
    ("model.atrous_rates=[]", "model.atrous_rates: need three positive integers"),
    ("train.val_every=0", "train.val_every: must be >= 1"),
    ("train.max_epochs=0", "train.max_epochs: must be >= 1"),
    ("train.max_minutes=0", "train.max_minutes: must be > 0"),
    ("train.early_stop_patience=-1", "train.early_stop_patience: must be >= 0"),
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps: must be >= 0"),
    ("train.nan_tolerance=-1", "train.nan_tolerance: must be >= 0"),
    ("train.threshold=1", "train.threshold: must be in (0, 1)"),
    ("train.threshold=0", "train.threshold: must be in (0, 1)"),
    ("optim.plateau_patience=-1", "optim.plateau_patience: must be >= 0"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs: must be >= 0"),
    ("loss.dice=-1", "loss.dice: weight must be >= 0"),
    ("loss.label_smoothing=1", "loss.label_smoothing: must be in [0, 1)"),
    ("train.freeze_after_lr_drops=2", "optim.scheduler='cosine'"),  # the recipe's schedule
    ("loss.boundary=0.5", "loss.boundary=0.5 needs model.edge_head=true"),
]


# checked when the model or the loss is built, by the code that uses them
BUILT_CHECKS = {"model.atrous_rates", "loss.dice", "loss.label_smoothing"}


@pytest.mark.parametrize(("setting", "message"), BAD_SETTINGS,
                         ids=[s.split("=")[0] for s, _ in BAD_SETTINGS])
def test_train_refuses_out_of_range_settings_before_writing(prepared, tmp_path, setting,
                                                            message):
    """Each value is refused naming its --set and field (a usage error: it named the recipe
    file, exit 1); no run folder (no config.yaml) is left."""
    recipe = "cpu_small"  # a shipped recipe, by name; cosine schedule
    small = ["data.image_size=32", "data.batch_size=4", "data.num_workers=0",
             "model.aspp_channels=8", "model.decoder_channels=8", "train.max_epochs=1",
             "train.max_minutes=1"]
    args = [arg for item in [*small, setting] for arg in ("-s", item)]
    out = tmp_path / "run"
    code, output = run_cli("train", "-c", recipe, "-d", prepared[0], "-o", out, "-q", *args)
    if setting.split("=")[0] in BUILT_CHECKS:
        assert code == 1 and message in output, output
    else:
        assert code == 2 and f"--set {setting}: " in output and message in output, output
    assert "Traceback" not in output and "cpu_small.yaml" not in output and not out.exists()


@pytest.mark.parametrize("args", [
    ["predict", "{tmp}/absent.ckpt", "{tmp}", "-o", "{tmp}/out"],
    ["evaluate", "{tmp}/absent.onnx", "--data", "{tmp}", "-o", "{tmp}/out"],
    ["export", "{tmp}/absent.ckpt", "-o", "{tmp}/out/m.onnx"],
    ["serve", "{tmp}/absent.onnx"],
    ["train", "--config", "{tmp}/absent.yaml", "--data", "{tmp}", "-o", "{tmp}/out"],
], ids=["predict", "evaluate", "export", "serve", "train"])
def test_a_missing_model_or_recipe_is_a_usage_error(tmp_path, args):
    Image.new("RGB", (16, 12)).save(tmp_path / "a.png")  # inputs exist: only the model is absent
    Image.new("L", (16, 12)).save(tmp_path / "a_segmentation.png")
    code, output = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert code == 2 and "absent." in output and "no such" in output, output
    assert "Traceback" not in output and not (tmp_path / "out").exists()
