"""The recipe trials of bench/: the cross-validation table pools each fold's images and pairs
two recipes image by image."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import crossval_table  # noqa: E402


def _fold_metrics(folder: Path, jaccards: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "dice", "jaccard", "threshold_jaccard"])
        for name, jaccard in jaccards.items():
            writer.writerow([name, 2 * jaccard / (1 + jaccard), jaccard,
                             jaccard if jaccard >= 0.65 else 0.0])


def test_crossval_table_pools_folds_by_source_and_pairs_recipes(tmp_path):
    images = {f"PH2_{i}": 0.80 + 0.01 * i for i in range(6)} | {
        f"ISIC_{i}": 0.55 + 0.04 * i for i in range(4)}
    better = {name: min(jaccard + 0.05, 1.0) for name, jaccard in images.items()}
    for label, values in (("base", images), ("cc", better)):
        names = sorted(values)
        for fold in range(2):  # each image in exactly one fold
            _fold_metrics(tmp_path / label / f"fold{fold}" / "eval",
                          {name: values[name] for name in names[fold::2]})
    source_of = {name: name.split("_")[0] for name in images}
    rows, pairs = crossval_table.rows_for(tmp_path, ["base", "cc"], source_of)
    by = {(row["recipe"], row["judged_on"]): row for row in rows}
    assert by[("base", "all")]["images"] == 10 and by[("base", "PH2")]["images"] == 6
    assert by[("base", "ISIC")]["failures"] == 3  # 0.55, 0.59, 0.63 (not 0.67)
    assert by[("cc", "ISIC")]["failures"] == 2  # 0.60, 0.64
    assert by[("base", "PH2")]["jaccard"] == pytest.approx(0.825)
    low, high = by[("base", "all")]["jaccard_ci95"]
    assert low < by[("base", "all")]["jaccard"] < high
    paired = {pair["judged_on"]: pair for pair in pairs}
    assert paired["all"]["jaccard"]["difference"] == pytest.approx(0.05)
    assert paired["all"]["jaccard"]["b_better"] == 10
    assert "| cc - base | all |" in "\n".join(crossval_table.markdown(rows, pairs))


def test_crossval_table_names_a_recipe_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no fold"):
        crossval_table.per_image(tmp_path, "missing")

