"""The table of `bench/loso.sh` runs: per recipe, trained on one source, judged on its own
validation split and on the other source; then, per recipe and direction, the mean over the
training seeds (labels LABEL-sN: LABEL trained with train.seed=N; LABEL alone: the recipe's
seed).

    python bench/loso_table.py [--work bench/work/loso] [--labels base,cc,robust,ema,...]
    python bench/loso_table.py --work bench/work/seeded --labels base,cc --name seeded_split

Writes bench/results/NAME.md and NAME.json (NAME: loso).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METRICS = ("dice", "jaccard", "threshold_jaccard")


def _row(label: str, trained: str, judged: str, metrics: dict) -> dict:
    ci = metrics.get("ci95") or {}
    quality = metrics.get("quality") or {}
    estimate = quality.get("estimate") or {}
    return {"recipe": label, "trained_on": trained, "judged_on": judged,
            "images": metrics["images"], "failures": metrics["failures"]["count"],
            **{name: metrics["overall"][name] for name in METRICS},
            **{f"{name}_ci95": ci.get(name) for name in METRICS},
            "estimate_auroc": estimate.get("auroc"),
            "baseline_auroc": (quality.get("baseline") or {}).get("auroc")}


def collect(work: Path, labels: list[str]) -> list[dict]:
    rows = []
    for label in labels:
        for run in sorted((work / label).glob("train-*")):
            trained = run.name.removeprefix("train-")
            for folder in sorted(run.glob("eval-*")):
                judged = folder.name.removeprefix("eval-")
                judged = f"{trained} val" if judged == "val" else judged
                metrics = json.loads((folder / "metrics.json").read_text())
                rows.append(_row(label, trained, judged, metrics))
    return rows


def _cell(row: dict, name: str) -> str:
    interval = row[f"{name}_ci95"]
    around = f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
    return f"{row[name]:.3f}{around}"


def markdown(rows: list[dict]) -> list[str]:
    lines = ["| recipe | trained on | judged on | images | Dice | Jaccard | threshold-Jaccard "
             "| failures (J < 0.65) | estimate AUROC (baseline) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        auroc = ("-" if row["estimate_auroc"] is None
                 else f"{row['estimate_auroc']:.3f} ({row['baseline_auroc'] or 0:.3f})")
        lines.append(f"| {row['recipe']} | {row['trained_on']} | {row['judged_on']} | "
                     f"{row['images']} | {_cell(row, 'dice')} | {_cell(row, 'jaccard')} | "
                     f"{_cell(row, 'threshold_jaccard')} | {row['failures']} | {auroc} |")
    return lines


def by_recipe(rows: list[dict]) -> list[str]:
    """Markdown rows: per recipe and unseen source, the mean (min-max) over seeds."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        if row["judged_on"].endswith(" val"):
            continue
        recipe = re.sub(r"-s\d+$", "", row["recipe"])
        groups.setdefault((recipe, row["trained_on"], row["judged_on"]), []).append(row)
    lines = ["| recipe | trained on | judged on | seeds | threshold-Jaccard | Dice | failures |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (recipe, trained, judged), runs in sorted(groups.items()):
        cells = []
        for name in ("threshold_jaccard", "dice", "failures"):
            values = [run[name] for run in runs]
            form = "{:.1f}" if name == "failures" else "{:.3f}"
            cells.append(f"{form.format(statistics.mean(values))} "
                         f"({form.format(min(values))}-{form.format(max(values))})")
        lines.append(f"| {recipe} | {trained} | {judged} | {len(runs)} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench/work/loso"))
    parser.add_argument("--labels", default="base,cc,robust,ema,emaw,ensemble-cc,ensemble-ema",
                        help="recipes; their LABEL-sN seed runs are included")
    parser.add_argument("--name", default="loso", help="bench/results/NAME.md and .json")
    args = parser.parse_args()
    labels = [folder.name for label in args.labels.split(",")
              for folder in sorted(args.work.glob(f"{label}*"))
              if folder.is_dir() and re.fullmatch(rf"{re.escape(label)}(-s\d+)?", folder.name)]
    rows = collect(args.work, labels)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=1))
    command = " ".join(["python bench/loso_table.py", *(
        [f"--work {args.work} --labels {args.labels} --name {args.name}"]
        if args.name != "loso" else [])])
    title = ("Leave-one-source-out on derm-real" if args.name == "loso"
             else f"{args.name.replace('_', ' ').capitalize()} of derm-real")
    lines = [f"# {title}", "",
             "`bash bench/loso.sh LABEL [--set ...]` (or bench/seeded_split.sh) per recipe, then "
             f"`{command}`. Means over images with their 95 % bootstrap interval.", "",
             *markdown(rows), "",
             "## Mean over training seeds, on the unseen source", "",
             "Mean (min-max) over the runs of each recipe with different `train.seed`.", "",
             *by_recipe(rows)]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
