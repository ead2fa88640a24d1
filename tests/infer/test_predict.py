"""Predictor, TTA and `dermaseg predict`: masks at the original size, resume, bad inputs."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import read_rgb
from dermaseg.infer.batch import PredictOptions, predict_files
from dermaseg.infer.inputs import list_inputs, parse_shard
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.tta import TTAConfig
from helpers.badinputs import run_cli

SIZE = 64


@pytest.fixture(scope="session")
def predictor(tiny_ckpt) -> Predictor:
    return Predictor.load(tiny_ckpt, batch_size=4)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("height, width", [(101, 67), (67, 101), (37, 123), (64, 64), (1, 9)])
def test_probability_and_mask_have_the_original_size(predictor, height, width):
    image = _image(height, width)
    prob = predictor.predict_proba([image])[0]
    assert prob.shape == (height, width) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    mask = predictor.predict(image)
    assert mask.shape == (height, width) and mask.dtype == bool


def test_batching_does_not_change_results(predictor):
    images = [_image(90, 70, seed=s) for s in range(5)]
    together = predictor.predict_proba(images)
    alone = [predictor.predict_proba([image])[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_tta_is_the_mean_of_flipped_predictions(predictor):
    image = _image(SIZE, SIZE, seed=3)  # the network's own size: no resize, no padding
    plain = predictor
    flips = [(lambda a: a), np.fliplr, np.flipud, lambda a: np.flipud(np.fliplr(a))]
    expected = np.mean([f(plain.predict_proba([np.ascontiguousarray(f(image))])[0])
                        for f in flips], axis=0)
    tta = Predictor(predictor.backend, predictor.meta, tta=TTAConfig())
    np.testing.assert_allclose(tta.predict_proba([image])[0], expected, atol=1e-5)
    assert not np.allclose(expected, plain.predict_proba([image])[0], atol=1e-4)


def test_tta_with_scales_keeps_the_original_size(predictor):
    config = TTAConfig(flips=("none", "h"), scales=(0.75, 1.0, 1.5))
    tta = Predictor(predictor.backend, predictor.meta, tta=config)
    assert tta.predict_proba([_image(51, 83)])[0].shape == (51, 83)
    with pytest.raises(UsageError):
        TTAConfig(flips=("diagonal",))


def test_exif_rotated_jpeg_gives_mask_of_displayed_size(predictor, tmp_path):
    photo = tmp_path / "in" / "rotated.jpg"
    photo.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(_image(70, 120)).save(photo, exif=exif)  # stored 120 wide x 70 high
    predict_files(predictor, [photo], tmp_path / "out", PredictOptions(progress=False))
    with Image.open(tmp_path / "out" / "rotated_segmentation.png") as mask:
        assert mask.size == (70, 120) and mask.mode == "L"


def test_folders_list_the_images_data_prepare_would_use(tmp_path):
    """ISIC 2017's superpixel maps, PH2's *_roi label folders and a NAME_mask beside NAME
    were predicted as images: two files per id broke the official scorer."""
    files = ["isic/ISIC_0000060.jpg", "isic/ISIC_0000060_superpixels.png",
             "isic/ISIC_0000060_segmentation.png", "IMD002/IMD002_Dermoscopic_Image/IMD002.bmp",
             "IMD002/IMD002_roi/IMD002_R1_Label1.bmp", "own/photo.jpg", "own/photo_mask.png",
             "own/gt.png"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(8, 8)).save(tmp_path / name)
    found, failed = list_inputs([str(tmp_path)])
    assert [str(path.relative_to(tmp_path)) for path in found] == [
        "IMD002/IMD002_Dermoscopic_Image/IMD002.bmp", "isic/ISIC_0000060.jpg", "own/gt.png",
        "own/photo.jpg"] and not failed
    named, _ = list_inputs([str(tmp_path / "own" / "photo_mask.png")])  # asked for by name
    assert named == [tmp_path / "own" / "photo_mask.png"]


def test_predict_writes_isic_masks_and_extras(predictor, synth_dir, tmp_path):
    files, failed = list_inputs([str(synth_dir)])
    assert len(files) == 12 and not failed  # the *_segmentation.png truths are not inputs
    options = PredictOptions(save_prob=True, overlay=True, measure=True, pixel_size_mm=0.05,
                             progress=False)
    summary = predict_files(predictor, files, tmp_path, options)
    assert len(summary.written) == 12 and not summary.failed
    for path in files:
        with Image.open(path) as image:
            size = image.size
        with Image.open(tmp_path / f"{path.stem}_segmentation.png") as mask:
            values = set(np.unique(np.asarray(mask)).tolist())
            assert mask.mode == "L" and mask.size == size and values <= {0, 255}
        with Image.open(tmp_path / "prob" / f"{path.stem}_prob.png") as prob:
            assert prob.size == size
        with Image.open(tmp_path / "overlay" / f"{path.stem}_overlay.jpg") as overlay:
            assert overlay.size == size
    first = np.asarray(Image.open(tmp_path / "synth_0001_segmentation.png"))
    assert set(np.unique(first).tolist()) == {0, 255}
    lines = (tmp_path / "measurements.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == sorted(p.stem for p in files)


def test_resume_skips_existing_masks_and_overwrite_redoes_them(predictor, synth_dir, tmp_path):
    files = sorted(synth_dir.glob("synth_000[1-4].jpg"))
    options = PredictOptions(progress=False)
    predict_files(predictor, files, tmp_path, options)
    (tmp_path / "synth_0002_segmentation.png").unlink()
    kept = tmp_path / "synth_0001_segmentation.png"
    os.utime(kept, (1, 1))
    summary = predict_files(predictor, files, tmp_path, options)
    assert summary.written == ["synth_0002"]
    assert summary.skipped == ["synth_0001", "synth_0003", "synth_0004"]
    assert kept.stat().st_mtime == 1
    options.overwrite = True
    assert len(predict_files(predictor, files, tmp_path, options).written) == 4
    assert kept.stat().st_mtime != 1


def test_shards_split_the_list_without_overlap(predictor, synth_dir, tmp_path):
    files = sorted(synth_dir.glob("synth_*.jpg"))[:5]
    options = PredictOptions(progress=False)
    first = predict_files(predictor, files, tmp_path, options, shard=(0, 2)).written
    second = predict_files(predictor, files, tmp_path, options, shard=(1, 2)).written
    assert not set(first) & set(second)
    assert sorted(first + second) == [p.stem for p in files]
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_inputs_from_files_folders_and_globs(synth_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(synth_dir, tmp_path / "data")
    for extra in ("prob", "overlay"):  # predict's own extras in OUT: not inputs
        (out / extra).mkdir(parents=True)
        shutil.copy(synth_dir / "synth_0001.jpg", out / extra / f"synth_0001_{extra}.jpg")
    shutil.copy(synth_dir / "synth_0001.jpg", out / "synth_0099.jpg")  # an image in OUT: input
    files, failed = list_inputs(
        [str(tmp_path / "data" / "synth_0001.jpg"), str(tmp_path / "data" / "synth_001*.jpg"),
         str(tmp_path), str(tmp_path / "nothing_here.png")], exclude=out)
    assert len(files) == 13 and all(p.parent.name == "data" for p in files[:12])
    assert files[12] == out / "synth_0099.jpg"
    assert len(failed) == 1 and "nothing_here.png" in failed[0]


def test_output_folder_may_be_the_input_folder(tiny_ckpt, synth_dir, tmp_path):
    same = tmp_path / "same"
    same.mkdir()
    for source in sorted(synth_dir.glob("synth_000[1-3].jpg")):
        shutil.copy(source, same)
    code, output = run_cli("predict", tiny_ckpt, same, "-o", same, "--quiet", "--overlay",
                           "--save-prob")
    assert code == 0 and "3 written" in output, output
    code, output = run_cli("predict", tiny_ckpt, same, "-o", same, "--quiet", "--overlay",
                           "--save-prob")  # its masks, prob/ and overlay/ are not inputs
    assert code == 0 and "0 written, 3 already there, 0 failed" in output, output


def test_ground_truth_masks_in_the_output_folder_are_never_touched(tiny_ckpt, synth_dir,
                                                                     tmp_path):
    """`predict data/ -o data/ --overwrite` on an ISIC folder wrote over its ground truth."""
    data = tmp_path / "data"
    data.mkdir()
    for source in sorted(synth_dir.glob("synth_000[1-2]*")):
        shutil.copy(source, data)
    truths = {p: p.read_bytes() for p in data.glob("*_segmentation.png")}
    assert len(truths) == 2
    for extra in ([], ["--overwrite"]):
        code, output = run_cli("predict", tiny_ckpt, data, "-o", data, "--quiet", *extra)
        assert code == 2 and "did not write" in output and "ground truth" in output, output
    assert {p: p.read_bytes() for p in data.glob("*_segmentation.png")} == truths
    assert not (data / "predict.json").exists()


def test_rerun_with_another_model_or_settings_is_refused_unless_overwrite(
        tiny_ckpt, synth_dir, tmp_path):
    """A rerun with --min-area or another checkpoint skipped every image ("already there")
    and kept the first run's masks."""
    image, out = synth_dir / "synth_0001.jpg", tmp_path / "out"
    assert run_cli("predict", tiny_ckpt, image, "-o", out, "-q")[0] == 0
    code, output = run_cli("predict", tiny_ckpt, image, "-o", out, "-q", "--min-area", "50")
    assert code == 2 and "postprocess differ" in output and "--overwrite" in output, output
    other = tmp_path / "other.ckpt"
    shutil.copy(tiny_ckpt, other)
    code, output = run_cli("predict", other, image, "-o", out, "-q")
    assert code == 2 and "models differ" in output, output
    code, output = run_cli("predict", other, image, "-o", out, "-q", "--overwrite")
    assert code == 0 and "1 written" in output, output
    code, output = run_cli("predict", other, image, "-o", out, "-q")  # now recorded: resume
    assert code == 0 and "0 written, 1 already there" in output, output
    settings = json.loads((out / "predict.json").read_text())["settings"]
    assert settings["models"][0]["path"] == str(other.resolve())
    code, output = run_cli("predict", f"{other},", image, "-o", out, "-q")  # a stray comma
    assert code == 0 and "0 written, 1 already there" in output, output


def test_out_never_holds_masks_or_extras_of_two_settings(tiny_ckpt, synth_dir, tmp_path):
    """--overwrite with another model rewrote the masks but kept the old probability maps and
    measurements, which a later run then took as done; a second folder predicted into OUT
    with other settings left masks of two models under one predict.json."""
    first, second, out = synth_dir / "synth_0001.jpg", synth_dir / "synth_0002.jpg", tmp_path
    other = tmp_path / "other.ckpt"
    shutil.copy(tiny_ckpt, other)
    out = tmp_path / "out"
    assert run_cli("predict", tiny_ckpt, first, "-o", out, "-q", "--measure", "--save-prob",
                   "--pixel-size", "0.01")[0] == 0
    code, output = run_cli("predict", tiny_ckpt, first, "-o", out, "-q")  # no --measure
    assert code == 0 and "1 already there" in output, output
    code, output = run_cli("predict", other, second, "-o", out, "-q", "--overwrite")
    assert code == 2 and "1 image(s) outside this run (synth_0001)" in output, output
    assert not (out / "synth_0002_segmentation.png").exists()
    code, output = run_cli("predict", other, first, "-o", out, "-q", "--overwrite")
    assert code == 0 and "1 written" in output, output
    assert not (out / "prob" / "synth_0001_prob.png").exists()
    assert not (out / "measurements.jsonl").exists()
    code, output = run_cli("predict", other, first, "-o", out, "-q", "--measure")
    assert code == 0 and "1 written" in output, output  # measured anew, not taken as done
    records = (out / "measurements.jsonl").read_text().splitlines()
    assert len(records) == 1 and "area_mm2" not in records[0]


def test_webp_images_are_listed_and_predicted(predictor, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image(50, 70)).save(folder / "photo.webp")
    files, failed = list_inputs([str(folder)])
    assert files == [folder / "photo.webp"] and not failed
    summary = predict_files(predictor, files, tmp_path / "out", PredictOptions(progress=False))
    assert summary.written == ["photo"]
    with Image.open(tmp_path / "out" / "photo_segmentation.png") as mask:
        assert mask.size == (70, 50)


def test_rerun_with_new_extras_makes_them(predictor, synth_dir, tmp_path):
    files = sorted(synth_dir.glob("synth_000[1-3].jpg"))
    predict_files(predictor, files, tmp_path, PredictOptions(progress=False))
    options = PredictOptions(overlay=True, measure=True, save_prob=True, progress=False)
    summary = predict_files(predictor, files, tmp_path, options)
    assert summary.written == [p.stem for p in files] and not summary.skipped
    assert len(list((tmp_path / "overlay").glob("*_overlay.jpg"))) == 3
    assert len(list((tmp_path / "prob").glob("*_prob.png"))) == 3
    (tmp_path / "measurements" / "synth_0002.json").unlink()
    summary = predict_files(predictor, files, tmp_path, options)
    assert summary.written == ["synth_0002"] and summary.skipped == ["synth_0001", "synth_0003"]
    records = [json.loads(line)
               for line in (tmp_path / "measurements.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [p.stem for p in files]


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_pixel_size_must_be_finite_and_positive(tiny_ckpt, synth_dir, tmp_path, value):
    code, output = run_cli("predict", tiny_ckpt, synth_dir / "synth_0001.jpg", "-o",
                           tmp_path / "out", "--measure", "--pixel-size", value, "--quiet")
    assert code == 2 and f"--pixel-size {value}" in output and "finite" in output, output
    assert not (tmp_path / "out").exists()


def test_pixel_size_without_measure_is_refused(tiny_ckpt, synth_dir, tmp_path):
    """It was silently ignored: no measurement is made without --measure."""
    code, output = run_cli("predict", tiny_ckpt, synth_dir / "synth_0001.jpg", "-o",
                           tmp_path / "out", "--pixel-size", "0.01", "--quiet")
    assert code == 2 and "--pixel-size 0.01: used only by --measure" in output, output
    assert not (tmp_path / "out").exists()


def test_image_between_one_and_two_times_the_pixel_limit_is_refused(predictor, tmp_path,
                                                                    monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_image(40, 40)).save(path)  # 1600 pixels, 1.6x the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow only warns up to 2x
    filters = list(warnings.filters)
    with pytest.raises(DermasegError, match="big.png: image too large"):
        read_rgb(path)
    assert warnings.filters == filters  # no process-wide change (serve decodes in threads)
    summary = predict_files(predictor, [path], tmp_path / "out", PredictOptions(progress=False))
    assert not summary.written and "big.png: image too large" in summary.failed[0]


def test_identity_tta_does_not_resample_at_a_size_not_a_multiple_of_8(predictor):
    meta = dataclasses.replace(predictor.meta, image_size=60)
    plain = Predictor(predictor.backend, meta)
    identity = Predictor(predictor.backend, meta, tta=TTAConfig(flips=("none",)))
    image = _image(75, 52, seed=4)
    np.testing.assert_allclose(identity.predict_proba([image])[0],
                               plain.predict_proba([image])[0], atol=1e-6)


def test_onnx_model_predicts_like_the_checkpoint(tiny_ckpt, predictor, tmp_path):
    from dermaseg.checkpoint import load_model
    from dermaseg.export.onnx import export_onnx

    model, meta = load_model(tiny_ckpt)
    onnx_path = export_onnx(model, meta, tmp_path / "tiny.onnx", exporter="legacy")
    onnx_predictor = Predictor.load(onnx_path)
    assert onnx_predictor.meta.image_size == SIZE
    image = _image(77, 45)
    np.testing.assert_allclose(onnx_predictor.predict_proba([image])[0],
                               predictor.predict_proba([image])[0], atol=1e-4)


def test_cli_skips_unreadable_inputs_and_exits_1(tiny_ckpt, synth_dir, tmp_path, monkeypatch,
                                                 capfd):
    from dermaseg.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(synth_dir / "synth_0001.jpg", inputs)
    shutil.copy(synth_dir / "synth_0002.jpg", inputs)
    (inputs / "broken.jpg").write_bytes(b"not a jpeg at all")
    data = (synth_dir / "synth_0003.jpg").read_bytes()
    (inputs / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["dermaseg", "predict", str(tiny_ckpt), str(inputs),
                                      "-o", str(out), "--quiet", "--keep-largest", "--fill-holes"])
    with pytest.raises(SystemExit) as stopped:
        main()
    stderr = capfd.readouterr().err
    assert stopped.value.code == 1, stderr
    assert "broken.jpg" in stderr and "truncated.jpg" in stderr and "Traceback" not in stderr
    written = sorted(p.name for p in out.glob("*_segmentation.png"))
    assert written == ["synth_0001_segmentation.png", "synth_0002_segmentation.png"]


def test_onnx_model_under_torchrun_on_a_gpu_with_cpu_onnxruntime(tiny_ckpt, synth_dir, tmp_path,
                                                                 monkeypatch):
    """Under torchrun, "auto" became "cuda:N" whenever PyTorch sees a GPU; an onnxruntime
    without CUDA (the default install) then refused every rank's ONNX model, where "auto" alone
    runs it on the CPU."""
    import onnxruntime
    import torch

    from dermaseg.checkpoint import load_model
    from dermaseg.export.onnx import export_onnx

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: cuda:N is right for it")
    model, meta = load_model(tiny_ckpt)
    onnx_path = export_onnx(model, meta, tmp_path / "tiny.onnx", exporter="legacy")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(synth_dir / "synth_0001.jpg", inputs)
    code, output = run_cli("predict", onnx_path, inputs, "-o", tmp_path / "out", "-q")
    assert code == 0, output
    assert (tmp_path / "out" / "synth_0001_segmentation.png").is_file()


def test_onnx_device_names(monkeypatch):
    import dermaseg.infer.onnx_backend as onnx_model
    from dermaseg.errors import UsageError

    monkeypatch.setattr(onnx_model, "onnxruntime_has_cuda", lambda: False)
    assert onnx_model.onnx_providers("auto") == ["CPUExecutionProvider"]
    assert onnx_model.onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        onnx_model.onnx_providers("cuda:1")
    with pytest.raises(UsageError, match="--device mps"):
        onnx_model.onnx_providers("mps")
    monkeypatch.setattr(onnx_model, "onnxruntime_has_cuda", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert onnx_model.onnx_providers("auto")[0] == ("CUDAExecutionProvider", {"device_id": 3})
    assert onnx_model.onnx_providers("cuda")[0] == ("CUDAExecutionProvider", {"device_id": 0})


def test_auto_device_of_a_checkpoint_under_torchrun_is_its_own_gpu(monkeypatch):
    import torch

    from dermaseg.infer.torch_backend import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_measure_writes_a_spreadsheet_and_the_summary_says_where_everything_went(
        tiny_ckpt, synth_dir, tmp_path):
    out = tmp_path / "out"
    inputs = [synth_dir / f"synth_000{k}.jpg" for k in (1, 2, 3)]
    code, output = run_cli("predict", tiny_ckpt, *inputs, "-o", out, "--measure", "--overlay",
                           "--pixel-size", "0.02")
    assert code == 0, output
    records = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    with open(out / "measurements.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == [record["id"] for record in records] == \
        ["synth_0001", "synth_0002", "synth_0003"]
    for row, record in zip(rows, records, strict=True):
        assert int(row["area"]) == record["area"] and row["image"] == record["image"]
        for name in ("perimeter", "perimeter_mm", "solidity", "asymmetry", "color_spread"):
            assert float(row[name]) == pytest.approx(record[name], rel=1e-12)
        assert int(row["bbox_width"]) == record["bbox"]["width"]
        assert float(row["centroid_x"]) == pytest.approx(record["centroid"][0])
        assert row["colors"] == "; ".join(record["colors"])
        for colour, share in record["color_fractions"].items():
            assert float(row[f"color_fractions_{colour}"]) == pytest.approx(share)
    assert not {"bbox", "centroid", "color_fractions", "contour"} & set(rows[0])
    for where in (f"{out}/<id>_segmentation.png", f"{out / 'overlay'}/<id>_overlay.jpg",
                  f"{out / 'measurements.csv'} (a row per image), measurements.jsonl",
                  f"{out / 'predict.json'}"):
        assert where in output, output
