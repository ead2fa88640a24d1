"""The table of `bench/crossval.sh` runs: per recipe, every derm-real image judged once, by
the fold model that did not train on it; per source (MANIFEST.tsv) and in all, with the
failures (Jaccard < 0.65); then each recipe against the first one, paired image by image.

    python bench/crossval_table.py [--work bench/work/crossval] [--labels cc,ema,base]

Writes bench/results/crossval.md and crossval.json. The quality estimate is left out: under
cross-validation each fold's estimate is fitted on the same images it would be judged on.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from dermaseg.evaluation.stats import bootstrap_mean_ci, paired_comparison
from dermaseg.quality import FAILURE_JACCARD

RESULTS = Path(__file__).parent / "results"
METRICS = ("dice", "jaccard", "threshold_jaccard")


def sources(data: Path) -> dict[str, str]:
    with (data / "MANIFEST.tsv").open(newline="") as handle:
        return {row["name"]: row["dataset"] for row in csv.DictReader(handle, delimiter="\t")}


def per_image(work: Path, label: str) -> dict[str, dict[str, float]]:
    """Image id -> its metrics, from every fold's evaluation of recipe LABEL."""
    images: dict[str, dict[str, float]] = {}
    folds = sorted((work / label).glob("fold*/eval/metrics.csv"))
    if not folds:
        raise SystemExit(f"{work / label}: no fold*/eval/metrics.csv (bench/crossval.sh)")
    for path in folds:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                images[row["id"]] = {name: float(row[name]) for name in METRICS}
    return images


def summary(images: dict[str, dict[str, float]], ids: list[str]) -> dict:
    values = np.array([[images[i][name] for name in METRICS] for i in ids])
    interval = bootstrap_mean_ci(values)
    return {"images": len(ids),
            "failures": int((values[:, METRICS.index("jaccard")] < FAILURE_JACCARD).sum()),
            **{name: float(values[:, k].mean()) for k, name in enumerate(METRICS)},
            **{f"{name}_ci95": None if interval is None else interval[:, k].tolist()
               for k, name in enumerate(METRICS)}}


def rows_for(work: Path, labels: list[str], source_of: dict[str, str]) -> tuple[list, list]:
    results = {label: per_image(work, label) for label in labels}
    ids = sorted(set.intersection(*(set(images) for images in results.values())))
    groups = {name: [i for i in ids if source_of.get(i) == name]
              for name in sorted({source_of.get(i, "?") for i in ids})}
    groups["all"] = ids
    rows, pairs = [], []
    for group, members in groups.items():
        for label in labels:
            rows.append({"recipe": label, "judged_on": group, **summary(results[label], members)})
        first = results[labels[0]]
        for label in labels[1:]:
            a = [[first[i][name] for name in METRICS] for i in members]
            b = [[results[label][i][name] for name in METRICS] for i in members]
            compared = paired_comparison(a, b)
            pairs.append({"recipe": label, "against": labels[0], "judged_on": group,
                          **{name: compared[k].as_dict() for k, name in enumerate(METRICS)}})
    return rows, pairs


def _cell(row: dict, name: str) -> str:
    low, high = row[f"{name}_ci95"] or (row[name], row[name])
    return f"{row[name]:.3f} ({low:.3f}-{high:.3f})"


def markdown(rows: list[dict], pairs: list[dict]) -> list[str]:
    lines = ["| recipe | judged on | images | Dice | Jaccard | threshold-Jaccard "
             "| failures (J < 0.65) |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['recipe']} | {r['judged_on']} | {r['images']} | {_cell(r, 'dice')} | "
              f"{_cell(r, 'jaccard')} | {_cell(r, 'threshold_jaccard')} | {r['failures']} |"
              for r in rows]
    lines += ["", "Paired, image by image (difference of the means, its 95 % bootstrap "
              "interval, Wilcoxon p):", "",
              "| recipe - against | judged on | Dice | threshold-Jaccard |", "|---|---|---:|---:|"]
    for pair in pairs:
        cells = []
        for name in ("dice", "threshold_jaccard"):
            result = pair[name]
            low, high = result["ci95"] or (result["difference"],) * 2
            cells.append(f"{result['difference']:+.3f} ({low:+.3f} to {high:+.3f}), "
                         f"p {result['p_value']:.2g}")
        lines.append(f"| {pair['recipe']} - {pair['against']} | {pair['judged_on']} | "
                     f"{' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench/work/crossval"))
    parser.add_argument("--labels", default="cc,ema,base", help="recipes, the first the reference")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/derm-real"),
                        help="derm-real, for MANIFEST.tsv's sources")
    args = parser.parse_args()
    labels = args.labels.split(",")
    rows, pairs = rows_for(args.work, labels, sources(args.data))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crossval.json").write_text(json.dumps({"rows": rows, "paired": pairs}, indent=1))
    lines = ["# 5-fold cross-validation of derm-real", "",
             "`bash bench/crossval.sh LABEL [--set ...]` per recipe (each image judged by the "
             f"fold model that did not train on it), then `python bench/crossval_table.py "
             f"--labels {args.labels}`. Means over images with their 95 % bootstrap interval.",
             "", *markdown(rows, pairs)]
    (RESULTS / "crossval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
