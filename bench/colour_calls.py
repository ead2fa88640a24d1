"""How the ABCD colour calls of `predict --measure` fall on real lesions: the share of the lesion
each colour takes and how often each is present (>= 5 % of the lesion), per source, on the true
masks of the real set.

    python bench/colour_calls.py                   # $DERMASEG_REAL, else ../shared/data/derm-real
    python bench/colour_calls.py --ph2-labels PH2_dataset.csv   # also by PH2 diagnosis

Two rules: dermaseg's (`dermaseg.infer.measure`: CIELAB, the nearest reference colour, pixels
farther than the cut-off unassigned) and, for comparison, the one it replaced (the nearest of
idealised RGB primaries, every pixel assigned). `--ph2-labels` takes the PH2 release's
PH2_dataset.txt (or a CSV with the columns Name and Clinical Diagnosis: 0 common nevus,
1 atypical nevus, 2 melanoma); clinically, melanomas show more colours than nevi, and black,
white and blue-grey more often. Writes bench/results/colour_calls.md and .json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import RESULTS, machine, markdown_table
from dermaseg.infer.measure import COLOR_MIN_FRACTION, ISIC_COLORS, measure_lesion

REAL = Path(os.environ.get("DERMASEG_REAL", Path(__file__).resolve().parents[2] / "shared"
                           / "data" / "derm-real"))
NAMES = list(ISIC_COLORS)
WORDS = {"white": "white", "red": "red", "light_brown": "light brown",
         "dark_brown": "dark brown", "blue_gray": "blue-grey", "black": "black"}
# The rule before: RGB in [0, 1], every pixel to the nearest of these, no cut-off.
PREVIOUS_RGB = np.array([(1.0, 1.0, 1.0), (0.8, 0.2, 0.2), (0.6, 0.4, 0.0), (0.2, 0.0, 0.0),
                         (0.2, 0.6, 0.6), (0.0, 0.0, 0.0)])
DIAGNOSES = {"0": "PH2 common nevus", "1": "PH2 atypical nevus", "2": "PH2 melanoma"}


def previous_fractions(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The shares of the six colours under the rule measure used before (same sampling)."""
    pixels = image[mask][:: max(1, int(mask.sum()) // 100_000)].astype(np.float64) / 255.0
    nearest = np.argmin(((pixels[:, None, :] - PREVIOUS_RGB[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=len(NAMES)) / len(pixels)


def read_ph2_labels(path: Path) -> dict[str, str]:
    """PH2 image name (IMD003) -> clinical diagnosis code, from PH2_dataset.txt ("|| IMD003 ||
    ... || 0 ||" rows) or a CSV with Name and Clinical Diagnosis columns."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if "||" in text:
        labels = {}
        for line in text.splitlines():
            cells = [cell.strip() for cell in line.split("||")]
            if len(cells) > 3 and cells[1].startswith("IMD"):
                labels[cells[1]] = cells[3]
        return labels
    return {row["Name"].strip(): row["Clinical Diagnosis"].strip()
            for row in csv.DictReader(text.splitlines()) if row.get("Name")}


def lesion_calls(folder: Path, labels: dict[str, str]) -> list[dict]:
    """A record per image of the set: its groups and both rules' colour shares."""
    records = []
    with open(folder / "MANIFEST.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        name = row["name"]
        image = np.asarray(Image.open(folder / f"{name}.jpg").convert("RGB"))
        mask = np.asarray(Image.open(folder / f"{name}_segmentation.png").convert("L")) > 127
        now = measure_lesion(mask, image)["color_fractions"]
        groups = [row["dataset"]]
        if (code := labels.get(name.removeprefix("PH2_"))) in DIAGNOSES:
            groups.append(DIAGNOSES[code])
        records.append({"groups": groups, "now": np.array([now[n] for n in NAMES]),
                        "before": previous_fractions(image, mask)})
    return records


def table_rows(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(shares, presence) rows: a row per rule and group."""
    shares, presence = [], []
    order = ["PH2", *DIAGNOSES.values()]  # each source, PH2's diagnoses after PH2
    groups = sorted(dict.fromkeys(g for r in records for g in r["groups"]),
                    key=lambda g: order.index(g) if g in order else len(order))
    for rule, key in (("before: RGB, nearest", "before"), ("now: CIELAB, cut-off", "now")):
        for group in groups:
            fractions = np.array([r[key] for r in records if group in r["groups"]])
            head = {"rule": rule, "lesions": group, "n": len(fractions)}
            mean = 100 * fractions.mean(axis=0)
            shares.append({**head, **{WORDS[n]: round(float(v), 1) for n, v in zip(
                NAMES, mean, strict=True)}, "unassigned": round(100 - float(mean.sum()), 1)})
            present = fractions >= COLOR_MIN_FRACTION
            presence.append({**head, **{WORDS[n]: round(100 * float(v)) for n, v in zip(
                NAMES, present.mean(axis=0), strict=True)},
                "colours per lesion": round(float(present.sum(axis=1).mean()), 2)})
    return shares, presence


def write(shares: list[dict], presence: list[dict], command: str) -> str:
    text = (
        "### Colour calls of `predict --measure` on real lesions (true masks)\n\n"
        f"`{command}`\n\n"
        "Mean share of the lesion's pixels each colour takes (%):\n\n"
        f"{markdown_table(shares)}\n\n"
        f"Lesions where the colour is present (>= {COLOR_MIN_FRACTION:.0%} of the lesion, %), "
        "and the mean number of colours present:\n\n"
        f"{markdown_table(presence)}\n\n"
        "- before: each pixel to the nearest of idealised RGB primaries (light brown "
        "(153, 102, 0), dark brown (51, 0, 0), red (204, 51, 51) ...); now: "
        "`dermaseg.infer.measure`, reference colours in CIELAB where these colours fall in "
        "dermoscopy images, the nearest by CIE76, unassigned beyond the cut-off "
        "(docs/prediction.md, \"Colours\").\n"
        "- The images are not white-balanced: a camera's colour cast moves the calls "
        "(the ISIC images' skin ranges from bluish to yellowish).\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "colour_calls.md").write_text(text)
    payload = {"name": "colour_calls", "command": command, "machine": machine(),
               "shares": shares, "presence": presence, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / "colour_calls.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description="The ABCD colour calls on the real set.")
    parser.add_argument("--data", type=Path, default=REAL, help="the real set (MANIFEST.tsv)")
    parser.add_argument("--ph2-labels", type=Path, default=None,
                        help="PH2_dataset.txt (or .csv): adds rows by PH2 diagnosis")
    args = parser.parse_args()
    labels = read_ph2_labels(args.ph2_labels) if args.ph2_labels else {}
    shares, presence = table_rows(lesion_calls(args.data, labels))
    command = "python bench/colour_calls.py" + (
        f" --ph2-labels {args.ph2_labels.name}" if args.ph2_labels else "")
    print(write(shares, presence, command))


if __name__ == "__main__":
    main()
