"""Lesion measurements as a table for a spreadsheet: one row per image, one column per scalar.

A record of `dermaseg.infer.measure` (with its image's id) becomes one row: nested values
become columns of their own (bbox -> bbox_x, bbox_y, ...; color_fractions -> one column per
colour; centroid -> centroid_x, centroid_y; mean_rgb -> mean_rgb_r, _g, _b), a list of names
one cell ("light_brown; dark_brown"); what has no place in a cell (a contour) is left out.
"""

from __future__ import annotations

import csv
import io
from typing import Any

PARTS = {"centroid": ("x", "y"), "mean_rgb": ("r", "g", "b")}  # lists of numbers, by name
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs text starting so


def flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """The scalars of `record`, nested ones named parent_child."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        _flatten(row, key, value)
    return row


def _flatten(row: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict):
        for inner, item in value.items():
            _flatten(row, f"{key}_{inner}", item)
    elif isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            row[key] = "; ".join(value)
        elif key in PARTS and len(value) == len(PARTS[key]):
            for part, item in zip(PARTS[key], value, strict=True):
                row[f"{key}_{part}"] = item
    else:
        row[key] = value


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column in the order first seen; a column that is empty in every row and whose
    values other rows spread over columns of their own (an empty mask's bbox: None) is left
    out."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return [name for name in names
            if any(row.get(name) is not None for row in rows)
            or not any(other.startswith(f"{name}_") for other in names)]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value  # shown as text, not run as a formula
    return value


def measurements_csv(records: list[dict[str, Any]]) -> str:
    """CSV text: a header row, then one row per record, in the order given."""
    rows = [flat_row(record) for record in records]
    names = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in names])
    return buffer.getvalue()
