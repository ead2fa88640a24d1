"""measurements.csv: the measurements of real masks as one row per image, one scalar a cell."""

from __future__ import annotations

import csv
import io

import numpy as np

from dermaseg.infer.measure import measure_lesion
from dermaseg.infer.measure_table import measurements_csv


def disc(radius: int, size: int = 64) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    return (ys - size / 2) ** 2 + (xs - size / 2) ** 2 <= radius**2


def read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_lesion_and_an_empty_mask_share_one_table():
    image = np.full((64, 64, 3), (150, 100, 40), dtype=np.uint8)
    lesion = {"id": "a", **measure_lesion(disc(20), image, pixel_size_mm=0.1)}
    empty = {"id": "b", **measure_lesion(np.zeros((64, 64), bool), image)}
    rows = read(measurements_csv([lesion, empty]))
    assert [row["id"] for row in rows] == ["a", "b"]
    first, second = rows
    assert int(first["area"]) == lesion["area"] and float(first["area_mm2"]) == \
        lesion["area_mm2"]
    assert float(first["perimeter"]) == lesion["perimeter"]  # full precision
    assert first["bbox_x"] == str(lesion["bbox"]["x"]) and first["empty"] == "false"
    assert first["colors"] == "; ".join(lesion["colors"])
    assert float(first["mean_rgb_g"]) == lesion["mean_rgb"][1]
    # the empty mask: its measures are blank cells, not a column "bbox" of its own
    assert second["empty"] == "true" and second["area"] == "0" and second["bbox_x"] == ""
    assert "bbox" not in first and "color_fractions" not in first


def test_text_a_spreadsheet_would_run_as_a_formula_is_kept_as_text():
    rows = read(measurements_csv([{"id": "=HYPERLINK(\"x\")", "image": "-a.jpg",
                                   "area": -1}]))
    assert rows[0]["id"] == "'=HYPERLINK(\"x\")" and rows[0]["image"] == "'-a.jpg"
    assert rows[0]["area"] == "-1"  # numbers stay numbers
