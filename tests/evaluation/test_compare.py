"""`dermaseg compare` and dermaseg.evaluation.stats: paired statistics of two real evaluations,
checked against independent computations from their metrics.csv; bad inputs; the bootstrap
itself."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

from dermaseg.evaluation import stats as dstats
from dermaseg.evaluation.metrics import METRIC_NAMES
from dermaseg.evaluation.report import md_text
from helpers.badinputs import run_cli


def _predictions(truth: Path, out: Path, change) -> Path:
    """`change`(bool mask) of every truth mask, saved as 0/255 under the same name in `out`."""
    out.mkdir()
    for path in sorted(truth.glob("*_segmentation.png")):
        mask = np.asarray(Image.open(path)) > 128
        Image.fromarray(change(mask).astype(np.uint8) * 255).save(out / path.name)
    return out


@pytest.fixture(scope="module")
def evaluations(synth_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Evaluation folders of two perturbed predictions of the 12 synthetic truths: A dilated by
    3 pixels, B eroded by 2 (each better on some metrics, worse on others)."""
    root = tmp_path_factory.mktemp("compare")
    truth = root / "truth"
    truth.mkdir()
    for path in synth_dir.glob("*_segmentation.png"):
        shutil.copy(path, truth / path.name)
    folders = []
    for name, change in (("dilated", lambda m: ndimage.binary_dilation(m, iterations=3)),
                         ("eroded", lambda m: ndimage.binary_erosion(m, iterations=2))):
        pred = _predictions(truth, root / name, change)
        code, output = run_cli("evaluate", "--pred", pred, "--truth", truth, "-o",
                               root / f"{name}-eval", "-q")
        assert code == 0, output
        folders.append(root / f"{name}-eval")
    return folders[0], folders[1]


def _csv_values(folder: Path) -> dict[str, dict[str, float]]:
    with open(folder / "metrics.csv", newline="") as handle:
        return {row["id"]: {n: float(row[n]) for n in METRIC_NAMES}
                for row in csv.DictReader(handle)}


def test_compare_equals_independent_statistics(evaluations, tmp_path):
    eval_a, eval_b = evaluations
    code, output = run_cli("compare", eval_a, eval_b, "-o", tmp_path / "cmp")
    assert code == 0, output
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    overall_a = json.loads((eval_a / "metrics.json").read_text())["overall"]
    overall_b = json.loads((eval_b / "metrics.json").read_text())["overall"]
    rows_a, rows_b = _csv_values(eval_a), _csv_values(eval_b)
    assert summary["images"] == len(rows_a) == 12 and sorted(rows_a) == sorted(rows_b)
    for name in METRIC_NAMES:
        result = summary["metrics"][name]
        assert result["mean_a"] == overall_a[name] and result["mean_b"] == overall_b[name]
        diffs = np.array([rows_b[i][name] - rows_a[i][name] for i in rows_a])
        assert result["difference"] == pytest.approx(diffs.mean(), abs=1e-12)
        low, high = result["ci95"]
        assert low <= result["difference"] <= high
        assert (result["b_better"], result["b_worse"], result["tied"]) == (
            int((diffs > 0).sum()), int((diffs < 0).sum()), int((diffs == 0).sum()))
        if diffs.any():
            assert not result["identical"]
            assert result["p_value"] == pytest.approx(stats.wilcoxon(diffs).pvalue, abs=1e-15)
    assert summary["metrics"]["sensitivity"]["difference"] < 0 < summary["metrics"][
        "precision"]["difference"]  # erosion loses lesion pixels, dilation adds false ones
    for line in ("dice", "threshold_jaccard", "B better/worse/tied"):
        assert line in output
    assert "| Dice |" in (tmp_path / "cmp" / "compare.md").read_text()
    with Image.open(tmp_path / "cmp" / "compare.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 500
    assert not [p for p in (tmp_path / "cmp").iterdir() if p.name.startswith(".")]


def test_an_evaluation_against_itself_is_identical(evaluations, tmp_path):
    eval_a, _ = evaluations
    code, output = run_cli("compare", eval_a, eval_a, "-o", tmp_path / "same", "--metric",
                           "jaccard")
    assert code == 0, output
    summary = json.loads((tmp_path / "same" / "compare.json").read_text())
    for result in summary["metrics"].values():
        assert result["difference"] == 0 and result["ci95"] == [0, 0]
        assert result["identical"] and result["p_value"] == 1
        assert result["tied"] == 12
    assert "1 (identical)" in output and "same folder" in output


def test_default_output_is_beside_both_evaluations(evaluations):
    eval_a, eval_b = evaluations
    out = eval_a.parent / "compare-dilated-eval-vs-eroded-eval"
    code, output = run_cli("compare", eval_a, eval_b)
    assert code == 0, output
    assert (out / "compare.json").is_file() and str(out) in output
    shutil.rmtree(out)


def _without(folder: Path, target: Path, drop: set[str]) -> Path:
    """A copy of an evaluation folder's metrics.csv without the rows of `drop`."""
    target.mkdir()
    lines = (folder / "metrics.csv").read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.split(",")[0] not in drop]
    (target / "metrics.csv").write_text("".join(kept))
    return target


def test_different_images_are_refused_unless_common(evaluations, tmp_path):
    eval_a, eval_b = evaluations
    ids = list(_csv_values(eval_b))
    fewer = _without(eval_b, tmp_path / "fewer", set(ids[3:5]))
    code, output = run_cli("compare", eval_a, fewer, "-o", tmp_path / "out")
    assert code == 2, output
    assert "2 only in" in output and ids[3] in output and "--common" in output
    assert "Traceback" not in output and not (tmp_path / "out").exists()
    code, output = run_cli("compare", eval_a, fewer, "-o", tmp_path / "out", "--common")
    assert code == 0, output
    assert "dropped 2 image(s) only in A" in output
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["images"] == 10 and sorted(summary["dropped"]["only_a"]) == ids[3:5]
    rows_a = _csv_values(eval_a)
    kept = [i for i in rows_a if i not in ids[3:5]]
    assert summary["metrics"]["dice"]["mean_a"] == pytest.approx(
        np.mean([rows_a[i]["dice"] for i in kept]), abs=1e-12)


def test_same_ids_of_other_images_are_refused(evaluations, tmp_path):
    """Two evaluations of other images under the same ids (another synthetic seed) were
    compared, with a "significant" difference."""
    eval_a, eval_b = evaluations

    def bigger_image(text: str) -> str:  # the first image 100 background pixels bigger
        rows = list(csv.reader(text.splitlines()))
        rows[1][-1] = str(int(rows[1][-1]) + 100)
        return "\n".join(",".join(row) for row in rows) + "\n"

    other = _edited(eval_b, tmp_path / "other", bigger_image)
    code, output = run_cli("compare", eval_a, other, "-o", tmp_path / "out")
    first = list(csv.reader((eval_a / "metrics.csv").read_text().splitlines()))[1][0]
    assert code == 2 and "the same ids name different images for 1 of" in output, output
    assert f"({first}): {first} has a" in output and not (tmp_path / "out").exists()


def test_metrics_csv_saved_by_a_spreadsheet_is_read(evaluations, tmp_path):
    """metrics.csv opened and saved again by a spreadsheet (UTF-8 with a BOM, CRLF lines):
    the same values as the original."""
    eval_a, _ = evaluations
    resaved = tmp_path / "resaved"
    resaved.mkdir()
    text = (eval_a / "metrics.csv").read_text(encoding="utf-8")
    (resaved / "metrics.csv").write_bytes("\ufeff".encode() + text.replace("\n", "\r\n")
                                          .encode())
    code, output = run_cli("compare", eval_a, resaved, "-o", tmp_path / "out")
    assert code == 0, output
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["images"] == 12 and all(r["identical"] for r in summary["metrics"].values())


def _edited(folder: Path, target: Path, edit) -> Path:
    target.mkdir()
    (target / "metrics.csv").write_text(edit((folder / "metrics.csv").read_text()))
    return target


BAD_CSV = {  # name: (edit of metrics.csv's text, exit code, words of the message)
    "missing_column": (lambda t: t.replace("precision", "ppv", 1), 1, ["no column precision"]),
    "not_a_number": (lambda t: t.replace("\n", "\nbad," + "x," * 10 + "1\n", 1), 1,
                     ["line 2", "accuracy is 'x', not a number"]),
    "nan": (lambda t: t.replace("\n", "\nbad," + "nan," * 10 + "1\n", 1), 1, ["'nan'"]),
    "short_row": (lambda t: t.replace("\n", "\nbad,1\n", 1), 1, ["line 2", "2 values"]),
    "empty": (lambda t: "", 1, ["empty file"]),
    "header_only": (lambda t: t.splitlines()[0] + "\n", 1, ["no image rows"]),
    "repeated_id": (lambda t: t + t.splitlines()[1] + "\n", 1, ["again"]),
    "one_image": (lambda t: "\n".join(t.splitlines()[:2]) + "\n", 2, ["1 image(s) in both"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_metrics_csv_is_named_and_nothing_is_written(evaluations, tmp_path, case):
    eval_a, _ = evaluations
    edit, exit_code, words = BAD_CSV[case]
    bad = _edited(eval_a, tmp_path / "bad", edit)
    args = [eval_a, bad, "-o", tmp_path / "out"] + (["--common"] if case == "one_image" else [])
    code, output = run_cli("compare", *args)
    assert code == exit_code, output
    for word in words:
        assert word in output, output
    if case != "one_image":
        assert "bad/metrics.csv" in output, output
    assert "Traceback" not in output and not (tmp_path / "out").exists()


def test_folders_that_are_not_evaluations(evaluations, tmp_path):
    eval_a, _ = evaluations
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for other, words in ((tmp_path / "plain", "no metrics.csv"),
                         (tmp_path / "missing", "not a folder"),
                         (tmp_path / "file.txt", "not a folder")):
        code, output = run_cli("compare", eval_a, other, "-o", tmp_path / "out")
        assert code == 2 and words in output and other.name in output, output
        assert "Traceback" not in output and not (tmp_path / "out").exists()
    run = tmp_path / "run"  # a training run's metrics.csv is per epoch
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_dice\n0,0.9,0.8,0.5\n")
    code, output = run_cli("compare", eval_a, run, "-o", tmp_path / "out")
    assert code == 2 and "a training run" in output and "dermaseg evaluate" in output, output
    shutil.copytree(eval_a, run / "eval-test")
    code, output = run_cli("compare", eval_a, run, "-o", tmp_path / "out")
    assert code == 2 and f"its evaluations: {run / 'eval-test'}" in output, output
    assert not (tmp_path / "out").exists()
    code, output = run_cli("compare", eval_a, eval_a, "--metric", "auc", "-o", tmp_path / "out")
    assert code == 2 and "--metric auc" in output and not (tmp_path / "out").exists()


def test_bootstrap_interval_has_the_normal_width_and_is_seeded():
    values = np.random.default_rng(7).normal(0.8, 0.1, size=400)
    low, high = dstats.bootstrap_mean_ci(values)
    expected = 2 * 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert abs((high - low) - expected) < 0.15 * expected
    assert low < values.mean() < high
    assert np.array_equal(dstats.bootstrap_mean_ci(values), [low, high])
    assert not np.array_equal(dstats.bootstrap_mean_ci(values, seed=1), [low, high])
    assert dstats.bootstrap_mean_ci(values[:1]) is None


def test_bootstrap_in_small_chunks_keeps_its_width(monkeypatch):
    values = np.random.default_rng(3).normal(0.8, 0.1, size=(400, 2))
    monkeypatch.setattr(dstats, "CHUNK_ELEMENTS", 1000)  # 1 resample of 400x2 per chunk
    bounds = dstats.bootstrap_mean_ci(values, resamples=1500)
    assert bounds.shape == (2, 2)
    expected = 2 * 1.96 * values.std(axis=0, ddof=1) / np.sqrt(len(values))
    assert np.all(np.abs((bounds[1] - bounds[0]) - expected) < 0.15 * expected)


def test_paired_interval_is_the_bootstrap_of_the_differences():
    rng = np.random.default_rng(5)
    a = rng.uniform(0.6, 0.9, size=(50, 3))
    b = a + rng.normal(0.01, 0.02, size=(50, 3))
    results = dstats.paired_comparison(a, b, seed=4)
    bounds = dstats.bootstrap_mean_ci(b - a, seed=4)
    for k, result in enumerate(results):
        assert result.ci == (bounds[0, k], bounds[1, k])
        assert result.p_value == stats.wilcoxon(b[:, k] - a[:, k]).pvalue
        assert result.b_better + result.b_worse + result.tied == 50


def test_compare_ends_with_a_verdict_in_plain_words(evaluations, tmp_path):
    """The last line says which is better on the metric, by how much, with the interval, the
    test and the images won; p-values read alike everywhere; the picture's legend names the
    two folders."""
    eval_a, eval_b = evaluations
    code, output = run_cli("compare", eval_a, eval_b, "-o", tmp_path / "cmp")
    assert code == 0, output
    rows_a, rows_b = _csv_values(eval_a), _csv_values(eval_b)
    diffs = np.array([rows_b[i]["dice"] - rows_a[i]["dice"] for i in rows_a])
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    low, high = summary["metrics"]["dice"]["ci95"]
    p = stats.wilcoxon(diffs).pvalue
    leader, sign = ("B", 1) if diffs.mean() > 0 else ("A", -1)
    wins = int((sign * diffs > 0).sum())
    assert (low > 0 or high < 0) and p < 0.05  # dilation and erosion differ clearly here
    lo, hi = sorted((sign * low, sign * high))
    p_words = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    expected = (f"{leader} is better on Dice by {abs(diffs.mean()):.3f} (95 % CI {lo:.3f} to "
                f"{hi:.3f}, {p_words}, {wins} of 12 images better with {leader}).")
    assert output.rstrip().splitlines()[-1] == expected == summary["verdict"]
    assert md_text(expected) in (tmp_path / "cmp" / "compare.md").read_text()
    table = [line for line in output.splitlines() if line.strip().startswith(
        tuple(METRIC_NAMES))]
    assert len(table) == len(METRIC_NAMES)
    for line in table:  # the p column: three decimals or <0.001, never 1.2e-05
        assert re.search(r"  (<0\.001|[01]\.\d{3}|1 \(identical\))  ", line), line


def test_the_picture_names_a_and_b(evaluations, tmp_path):
    from dermaseg.evaluation.compare import compare_scores, plot_comparison, read_scores

    a, b = (read_scores(folder) for folder in evaluations)
    results = compare_scores(a, b, a.ids, 200, 0)
    dice = METRIC_NAMES.index("dice")
    figure = plot_comparison(a.rows(a.ids)[:, dice], b.rows(a.ids)[:, dice], results["dice"],
                             "dice", tmp_path / "p.png", ("runs/r18/eval", "runs/r50/eval"))
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "A: runs/r18/eval" in legend and "B: runs/r50/eval" in legend


def test_no_clear_difference_is_said_as_such():
    from dermaseg.evaluation.compare import verdict

    rng = np.random.default_rng(0)
    a = rng.uniform(0.7, 0.9, 30)
    b = a + rng.normal(0, 0.01, 30)  # noise about no change
    (result,) = dstats.paired_comparison(a, b, 500, 0)
    assert result.ci[0] < 0 < result.ci[1] and result.p_value >= 0.05
    assert verdict(result, "dice").startswith("No clear difference on Dice: ")
