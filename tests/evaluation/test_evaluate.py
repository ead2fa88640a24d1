"""`dermaseg evaluate`: numbers equal dermaseg.evaluation.metrics and the official ISIC
scorer; reports."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.errors import DermasegError
from dermaseg.evaluation.evaluate import evaluate_folders, evaluate_model, split_items
from dermaseg.evaluation.files import write_evaluation
from dermaseg.evaluation.metrics import METRIC_NAMES, image_metrics, summarize
from dermaseg.infer.batch import PredictOptions, predict_files
from dermaseg.infer.inputs import list_inputs
from dermaseg.infer.predictor import Predictor


def run_cli(*args: str):
    """The `dermaseg` command in this process (no interpreter start-up)."""
    from typer.testing import CliRunner

    from dermaseg.cli import app

    return CliRunner().invoke(app, list(args))


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return ((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2).astype(np.uint8) * 255


def _mask_folders(root: Path) -> tuple[Path, Path, dict]:
    """Truth and prediction folders (ISIC names) with perfect, empty, shifted and missed cases."""
    shape = (47, 63)
    truth_disc = _disc(shape, (23, 30), 14)
    empty = np.zeros(shape, np.uint8)
    cases = {  # id: (prediction, truth)
        "ISIC_0000001": (truth_disc, truth_disc),  # perfect
        "ISIC_0000002": (empty, empty),  # both empty: every metric is 1
        "ISIC_0000003": (_disc(shape, (25, 33), 13), truth_disc),  # Jaccard above 0.65
        "ISIC_0000004": (_disc(shape, (10, 10), 6), truth_disc),  # poor overlap
        "ISIC_0000005": (empty, truth_disc),  # missed lesion
        "ISIC_0000006": (truth_disc, empty),  # lesion where there is none
        "ISIC_0000007": (np.full(shape, 255, np.uint8), np.full(shape, 255, np.uint8)),
    }
    pred_dir, truth_dir = root / "pred", root / "truth"
    pred_dir.mkdir()
    truth_dir.mkdir()
    for image_id, (pred, truth) in cases.items():
        Image.fromarray(pred).save(pred_dir / f"{image_id}_segmentation.png")
        Image.fromarray(truth).save(truth_dir / f"{image_id}_segmentation.png")
    return pred_dir, truth_dir, cases


def test_folder_metrics_equal_dermaseg_metrics(tmp_path):
    pred_dir, truth_dir, cases = _mask_folders(tmp_path)
    result = evaluate_folders(pred_dir, truth_dir, progress=False)
    summary = write_evaluation(result, tmp_path / "out", "t", [])
    expected = {i: image_metrics(p, t) for i, (p, t) in cases.items()}
    assert result.per_image == expected
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert stored["overall"] == pytest.approx(summarize(expected), abs=1e-12)
    assert stored["per_image"] == expected and summary["images"] == len(cases)
    with open(tmp_path / "out" / "metrics.csv") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    for image_id, values in expected.items():
        for name in METRIC_NAMES:
            assert float(rows[image_id][name]) == values[name]


def test_missing_predictions_are_listed(tmp_path):
    pred_dir, truth_dir, _ = _mask_folders(tmp_path)
    (pred_dir / "ISIC_0000003_segmentation.png").unlink()
    (pred_dir / "ISIC_0000005_segmentation.png").unlink()
    with pytest.raises(DermasegError, match="ISIC_0000003, ISIC_0000005"):
        evaluate_folders(pred_dir, truth_dir, progress=False)


def test_report_files_exist_and_html_references_the_images(tmp_path):
    pred_dir, truth_dir, _ = _mask_folders(tmp_path)
    result = run_cli("evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir), "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "pred-eval"
    for name in ("metrics.csv", "metrics.json", "report.md", "report.html", "jaccard_hist.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    pictures = re.findall(r"<img src='data:image/png;base64,([^']+)' data-file='([^']+)'", html)
    files = [file for _, file in pictures]
    assert "jaccard_hist.png" in files and any(f.startswith("gallery/") for f in files)
    for data, file in pictures:  # self-contained: each picture is in the page itself
        assert base64.b64decode(data) == (out / file).read_bytes()
    assert "src='gallery" not in html and "src='jaccard" not in html
    assert "Threshold-Jaccard" in html and "ISIC_0000004" in html
    assert "counted as 0 below 0.65" in html and "ground truth" in html  # definitions, legend
    assert "Jaccard 0." in html and " J=" not in html
    markdown = (out / "report.md").read_text()
    assert "| Dice |" in markdown and "](jaccard_hist.png)" in markdown
    assert "**Sensitivity**: TP / (TP + FN)" in markdown


def _isic_inputs(synth_dir: Path, root: Path) -> tuple[Path, Path]:
    """Synthetic pairs renamed to ISIC ids: images/ and a truth/ folder holding only masks."""
    images, truth = root / "images", root / "truth"
    images.mkdir()
    truth.mkdir()
    for number, source in enumerate(sorted(synth_dir.glob("synth_*.jpg"))[:6], start=1):
        image_id = f"ISIC_{number:07d}"
        shutil.copy(source, images / f"{image_id}.jpg")
        shutil.copy(source.with_name(f"{source.stem}_segmentation.png"),
                    truth / f"{image_id}_segmentation.png")
    return images, truth


def test_official_scorer_reads_predictions_and_agrees(tiny_ckpt, synth_dir, tmp_path):
    images, truth = _isic_inputs(synth_dir, tmp_path)
    pred = tmp_path / "pred"
    predictor = Predictor.load(tiny_ckpt)
    files, _ = list_inputs([str(images)])
    options = PredictOptions(save_prob=True, overlay=True, progress=False)  # extras beside
    predict_files(predictor, files, pred, options)
    scorer = shutil.which("isic-challenge-scoring", path=str(Path(sys.executable).parent))
    if scorer is None:
        pytest.skip("isic-challenge-scoring is not installed (pip install dermaseg[dev])")
    result = subprocess.run([scorer, "--output", "json", "segmentation", str(truth), str(pred)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    official = json.loads(result.stdout)["macro_average"]
    ours = evaluate_folders(pred, truth, images, progress=False).overall()
    assert 0 < ours["jaccard"] < 1  # a real mix of lesion and skin, not a trivial case
    for name in ("accuracy", "sensitivity", "specificity", "jaccard", "threshold_jaccard",
                 "dice"):
        assert ours[name] == pytest.approx(official[name], abs=1e-9), name


def test_a_split_of_a_raw_folder_is_refused_not_ignored(tiny_ckpt, synth_dir, tmp_path):
    """A raw folder has no splits or folds: `--split fold0` (or val) scored every pair, the
    fold model's training images included, under the split's name."""
    from helpers.badinputs import run_cli

    for split in ("fold0", "val"):
        code, output = run_cli("evaluate", tiny_ckpt, "--data", synth_dir, "--split", split,
                               "-o", tmp_path / split, "-q")
        assert code == 2 and f"--split {split}: " in output and "raw folder" in output, output
        assert not (tmp_path / split).exists()
    assert len(split_items(synth_dir, "test")) == 12  # the default: every pair, as before


def test_model_evaluation_equals_predict_then_score(tiny_ckpt, synth_dir, tmp_path):
    predictor = Predictor.load(tiny_ckpt, batch_size=4)
    items = split_items(synth_dir, "test")  # a raw pair folder: every pair
    assert len(items) == 12
    direct = evaluate_model(predictor, items[:5], progress=False)
    predict_files(predictor, [image for _, image, _ in items[:5]], tmp_path,
                  PredictOptions(progress=False))
    truth = tmp_path / "truth"
    truth.mkdir()
    for _, _, mask in items[:5]:
        shutil.copy(mask, truth)
    from_files = evaluate_folders(tmp_path, truth, progress=False)
    assert direct.per_image == from_files.per_image


def test_model_evaluation_on_a_prepared_split(tiny_ckpt, synth_dir, tmp_path):
    from dermaseg.data.prepare import prepare_dataset

    manifest = prepare_dataset(synth_dir, tmp_path / "prep", size=64, val=0.25, test=0.25,
                               workers=1, progress=False)
    test_ids = sorted(item["id"] for item in manifest["items"] if item["split"] == "test")
    items = split_items(tmp_path / "prep", "test")
    assert sorted(i for i, _, _ in items) == test_ids
    result = run_cli("evaluate", str(tiny_ckpt), "--data", str(tmp_path / "prep"),
                     "-o", str(tmp_path / "eval"), "--quiet")
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert sorted(stored["per_image"]) == test_ids
    with open(tmp_path / "eval" / "metrics.csv") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    for image_id, _, mask_path in items:  # scored at the source mask's own size
        with Image.open(mask_path) as mask:
            pixels = sum(int(rows[image_id][k]) for k in ("tp", "fp", "fn", "tn"))
            assert pixels == mask.size[0] * mask.size[1] > 64 * 64
    # the same evaluation again replaces it; another one is refused unless --overwrite
    common = ["evaluate", str(tiny_ckpt), "--data", str(tmp_path / "prep"), "-o",
              str(tmp_path / "eval"), "--quiet"]
    assert run_cli(*common).exit_code == 0
    for other in (["--split", "val"], ["--keep-largest"]):
        result = run_cli(*common, *other)
        assert type(result.exception).__name__ == "UsageError", result.output
        assert "holds an evaluation of something else" in str(result.exception)
    assert sorted(json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image"]) \
        == test_ids
    assert run_cli(*common, "--split", "val", "--overwrite").exit_code == 0
    # the prepared folder given as --truth: named as such, with the command that fits
    result = run_cli("evaluate", "--pred", str(tmp_path / "eval"), "--truth",
                     str(tmp_path / "prep"), "-o", str(tmp_path / "e2"))
    message = str(result.exception)
    assert type(result.exception).__name__ == "UsageError" and "a prepared dataset" in message
    assert "evaluate MODEL --data" in message


def test_options_that_change_the_masks_name_the_default_report_folder(tiny_ckpt, synth_dir,
                                                                      tmp_path):
    """`evaluate MODEL --data D --tta` refused MODEL's eval-test/ (another evaluation's) after
    loading the model; now it writes eval-test-tta/ beside it."""
    from dermaseg.data.prepare import prepare_dataset

    prepare_dataset(synth_dir, tmp_path / "prep", size=64, val=0.25, test=0.25, workers=1,
                    progress=False)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_ckpt, run / "best.ckpt")
    common = ["evaluate", str(run / "best.ckpt"), "--data", str(tmp_path / "prep"), "-q"]
    assert run_cli(*common).exit_code == 0
    plain = (run / "eval-test" / "metrics.json").read_text()
    result = run_cli(*common, "--tta", "--keep-largest", "--min-area", "5")
    assert result.exit_code == 0, result.output
    folder = run / "eval-test-tta-keep-largest-min-area5"
    assert f"report: {folder / 'report.html'}" in result.output
    notes = json.loads((folder / "metrics.json").read_text())["notes"]
    assert any("TTA on" in note and "largest_component=True" in note for note in notes), notes
    assert (run / "eval-test" / "metrics.json").read_text() == plain  # untouched
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == [
        "eval-test", "eval-test-tta-keep-largest-min-area5"]


def test_raw_folder_evaluation_notes_images_without_masks(tiny_ckpt, synth_dir, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synth_dir, raw)
    shutil.copy(raw / "synth_0001.jpg", raw / "lonely.jpg")  # an image with no mask
    result = run_cli("evaluate", str(tiny_ckpt), "--data", str(raw), "-o", str(tmp_path / "e"),
                     "--quiet")
    assert result.exit_code == 0, result.output
    assert "1 image(s) without a mask not scored: lonely.jpg" in result.output
    summary = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert summary["images"] == len(split_items(synth_dir, "test"))
    assert any("lonely.jpg" in note for note in summary["notes"])


def test_failed_evaluation_writes_nothing(tmp_path):
    pred_dir, truth_dir, _ = _mask_folders(tmp_path)
    out = tmp_path / "evh"
    out.mkdir()
    (out / "gallery").write_text("a file where the gallery goes")
    result = run_cli("evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir), "-o",
                     str(out), "--quiet")
    assert isinstance(result.exception, DermasegError), result.output
    assert "gallery: not a folder" in str(result.exception)
    assert [p.name for p in out.iterdir()] == ["gallery"]


def test_rewriting_a_report_replaces_the_old_gallery_pictures_only(tmp_path):
    pred_dir, truth_dir, _ = _mask_folders(tmp_path)
    out = tmp_path / "out"
    write_evaluation(evaluate_folders(pred_dir, truth_dir, progress=False), out, "t", [])
    stale = out / "gallery" / "worst_09_ISIC_0000099.png"
    stale.write_bytes(b"from an earlier run")
    mine = out / "gallery" / "notes.txt"
    mine.write_text("the user's own file")
    for extra in ("ISIC_0000001", "ISIC_0000002"):  # a smaller run: fewer gallery pictures
        (pred_dir / f"{extra}_segmentation.png").unlink()
        (truth_dir / f"{extra}_segmentation.png").unlink()
    summary = write_evaluation(evaluate_folders(pred_dir, truth_dir, progress=False), out, "t",
                               [])
    assert summary["images"] == 5
    html = (out / "report.html").read_text()
    shown = {s.removeprefix("gallery/") for s in re.findall(r"data-file='(gallery/[^']+)'", html)}
    assert {p.name for p in (out / "gallery").iterdir()} == shown | {"notes.txt"}
    assert mine.read_text() == "the user's own file"  # only dermaseg's thumbnails are replaced
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_means_have_bootstrap_intervals_in_json_reports_and_output(tmp_path):
    from dermaseg.evaluation.stats import bootstrap_mean_ci

    pred_dir, truth_dir, cases = _mask_folders(tmp_path)
    result = run_cli("evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir), "-o",
                     str(tmp_path / "e"), "--quiet")
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert stored["overall"] == summarize({i: image_metrics(p, t) for i, (p, t) in cases.items()})
    bootstrap = stored["bootstrap"]
    values = [[row[n] for n in METRIC_NAMES] for row in stored["per_image"].values()]
    bounds = bootstrap_mean_ci(values, bootstrap["resamples"], bootstrap["seed"])
    for k, name in enumerate(METRIC_NAMES):
        low, high = stored["ci95"][name]
        assert [low, high] == [bounds[0, k], bounds[1, k]]
        assert low <= stored["overall"][name] <= high
    dice = stored["overall"]["dice"]
    low, high = stored["ci95"]["dice"]
    assert f"dice               {dice:.4f}  (95% CI {low:.4f}-{high:.4f})" in result.output
    row = f"| Dice | {dice:.4f} | {low:.4f}-{high:.4f} |"
    assert row in (tmp_path / "e" / "report.md").read_text()
    assert f"<td>{low:.4f}-{high:.4f}</td>" in (tmp_path / "e" / "report.html").read_text()


def test_one_image_has_no_interval(tmp_path):
    pred_dir, truth_dir, _ = _mask_folders(tmp_path)
    for path in [*pred_dir.iterdir(), *truth_dir.iterdir()]:
        if not path.name.startswith("ISIC_0000003"):
            path.unlink()
    result = run_cli("evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir), "-o",
                     str(tmp_path / "e"), "--quiet")
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert stored["images"] == 1 and stored["ci95"] is None
    assert "no interval" in stored["bootstrap"]["note"]
    assert "(no CI: 1 image)" in result.output
    report = (tmp_path / "e" / "report.md").read_text()
    assert "no confidence interval" in report and "1 image. " in report
    assert "Worst cases" not in report  # one image is the best case; no empty heading
    assert "Worst cases" not in (tmp_path / "e" / "report.html").read_text()
