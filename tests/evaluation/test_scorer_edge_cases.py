"""Audit of `dermaseg evaluate`: exact equality with the official scorer on awkward masks,
folders with duplicate or extra masks, 0/1 masks, and report links of unusual image names."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from dermaseg.errors import DermasegError
from dermaseg.evaluation.evaluate import evaluate_folders
from dermaseg.evaluation.files import write_evaluation

isic_segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")
isic_load = pytest.importorskip("isic_challenge_scoring.load_image")
isic_metrics = pytest.importorskip("isic_challenge_scoring.metrics")
isic_confusion = pytest.importorskip("isic_challenge_scoring.confusion")


def _square(shape=(30, 40), top=5, left=5, side=16) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top:top + side, left:left + side] = 255
    return mask


def _save(array: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def _jpeg_noisy(mask: np.ndarray) -> np.ndarray:
    """The mask after a low-quality JPEG round trip: values other than 0 and 255."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="JPEG", quality=20)
    return np.asarray(Image.open(buffer))


def _awkward_folders(root: Path) -> tuple[Path, Path]:
    """Truth/prediction folders: empty truth, empty prediction, both empty, full, JPEG and 1-bit
    predictions, a Jaccard of exactly 0.65 and one just below."""
    truth, pred = root / "truth", root / "pred"
    square, empty = _square(), np.zeros((30, 40), np.uint8)
    truth20 = np.zeros((30, 40), np.uint8)
    truth20[0, :20] = 255
    pred13 = np.zeros((30, 40), np.uint8)
    pred13[0, :13] = 255  # TP 13, FN 7: Jaccard 13/20 = 0.65 exactly
    pred14 = pred13.copy()
    pred14[1, 0] = 255  # and one FP: 13/21 < 0.65
    cases = {1: (square, empty), 2: (empty, square), 3: (empty, empty),
             4: (np.full((30, 40), 255, np.uint8),) * 2, 5: (_square(left=9), square),
             6: (pred13, truth20), 7: (pred14, truth20), 8: (_square(top=8), square)}
    for number, (p, t) in cases.items():
        name = f"ISIC_{number:07d}_segmentation"
        _save(t, truth / f"{name}.png")
        if number == 5:
            _save(p, pred / f"{name}.jpg", quality=20)
        elif number == 8:
            Image.fromarray(p).convert("1").save(pred / f"{name}.png")
        else:
            _save(p, pred / f"{name}.png")
    return truth, pred


def _official_per_image(truth: Path, pred: Path) -> dict[str, dict[str, float]]:
    out = {}
    for pair in isic_load.iter_image_pairs(truth, pred):
        cm = isic_confusion.create_binary_confusion_matrix(
            truth_binary_values=pair.truth_image > 128,
            prediction_binary_values=pair.prediction_image > 128)
        out[pair.image_id] = {
            "accuracy": isic_metrics.binary_accuracy(cm),
            "sensitivity": isic_metrics.binary_sensitivity(cm),
            "specificity": isic_metrics.binary_specificity(cm),
            "jaccard": isic_metrics.binary_jaccard(cm),
            "threshold_jaccard": isic_metrics.binary_threshold_jaccard(cm, threshold=0.65),
            "dice": isic_metrics.binary_dice(cm), "precision": isic_metrics.binary_ppv(cm)}
    return out


def test_folder_evaluation_equals_the_scorer_to_the_last_digit(tmp_path):
    truth, pred = _awkward_folders(tmp_path)
    ours = evaluate_folders(pred, truth, progress=False)
    official = _official_per_image(truth, pred)
    assert set(ours.per_image) == set(official)
    for image_id, values in official.items():
        for name, value in values.items():
            assert ours.per_image[image_id][name] == value, (image_id, name)
    jaccards = sorted(v["jaccard"] for v in ours.per_image.values())
    assert 0.65 in jaccards and ours.per_image["ISIC_0000006"]["threshold_jaccard"] == 0.65
    assert 0 < ours.per_image["ISIC_0000007"]["jaccard"] < 0.65
    macro = isic_segmentation.SegmentationScore.from_dir(truth, pred).macro_average
    overall = ours.overall()
    for name, value in macro.items():
        assert overall[name] == value, name  # exact: the same macro average


def test_two_masks_of_one_id_in_a_folder_are_an_error_naming_both(tmp_path):
    truth, pred = _awkward_folders(tmp_path)
    _save(np.zeros((30, 40), np.uint8), pred / "ISIC_0000003_segmentation.jpg")
    with pytest.raises(DermasegError, match=r"ISIC_0000003_segmentation\.jpg.*"
                                            r"ISIC_0000003_segmentation\.png"):
        evaluate_folders(pred, truth, progress=False)


def test_predictions_without_truth_and_0_1_masks_are_named(tmp_path):
    truth, pred = _awkward_folders(tmp_path)
    _save(_square(), pred / "ISIC_0000099_segmentation.png")  # no truth for it
    _save((_square() > 0).astype(np.uint8), truth / "ISIC_0000001_segmentation.png")  # 0/1
    result = evaluate_folders(pred, truth, progress=False)
    assert "ISIC_0000099" not in result.per_image
    text = "\n".join(result.warnings)
    assert "1 prediction(s) without a truth mask not scored: ISIC_0000099" in text
    assert re.search(r"0 and 1 only.*ISIC_0000001_segmentation\.png", text)
    assert result.per_image["ISIC_0000001"]["sensitivity"] == 1.0  # all background, like ISIC


def test_one_image_report(tmp_path):
    truth, pred = tmp_path / "t", tmp_path / "p"
    _save(_square(), truth / "ISIC_0000001_segmentation.png")
    _save(_square(left=7), pred / "ISIC_0000001_segmentation.png")
    summary = write_evaluation(evaluate_folders(pred, truth, progress=False), tmp_path / "o",
                               "t", [])
    assert summary["images"] == 1 and summary["overall"] == summary["per_image"]["ISIC_0000001"]
    assert [p.name for p in (tmp_path / "o" / "gallery").iterdir()] == [
        "best_01_ISIC_0000001.png"]


@pytest.mark.parametrize("image_id", ["a#b", "c?d", "100%", "e f", "<script>x"])
def test_report_links_reach_the_gallery_pictures(tmp_path, image_id):
    truth, pred = tmp_path / "t", tmp_path / "p"
    _save(_square(), truth / f"{image_id}_segmentation.png")
    _save(_square(left=7), pred / f"{image_id}_segmentation.png")
    out = tmp_path / "o"
    write_evaluation(evaluate_folders(pred, truth, progress=False), out, "t", [])
    page = (out / "report.html").read_text()
    assert "<script>" not in page
    sources = re.findall(r"data-file='(gallery/[^']+)'", page)
    markdown = re.findall(r"\]\((gallery/[^)\s]+)\)", (out / "report.md").read_text())
    assert len(sources) == len(markdown) == 1
    for link in (html.unescape(sources[0]), markdown[0]):  # URL paths: '#', '?', ' ' encoded
        assert not set("#? ") & set(link)
        assert (out / unquote(link)).is_file(), link


def test_a_prediction_of_another_size_is_named_with_both_sizes(tmp_path):
    truth, pred = _awkward_folders(tmp_path)
    _save(np.zeros((31, 40), np.uint8), pred / "ISIC_0000002_segmentation.png")
    with pytest.raises(DermasegError, match=r"ISIC_0000002_segmentation\.png: size 40x31, "
                                            r"truth is 40x30"):
        evaluate_folders(pred, truth, progress=False)
