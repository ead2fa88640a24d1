"""Quality within a time budget: configs/cpu_small.yaml on the real images, with and without
the attention block + edge head, side by side.

    python bench/bench_quality.py                       # prepares ../shared/data/derm-real
    python bench/bench_quality.py --data prep-real/ --minutes 18 --variants base,attention_edge

Each variant trains from random weights with the recipe's time budget (train.max_minutes) on
the prepared set's own train/val split (15 % val) and reports its best val Dice, the minutes
until val Dice first reached 0.90, and its curve (bench/results/quality_<variant>.png). Long:
run it on a quiet machine, one variant after the other.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import RESULTS, report
from dermaseg.config import load_config
from dermaseg.data.prepare import prepare_dataset
from dermaseg.train.runner import train

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("DERMASEG_REAL", ROOT.parent / "shared" / "data" / "derm-real"))
VARIANTS = {
    "base": [],
    "attention_edge": ["model.attention=scse", "model.edge_head=true", "loss.boundary=0.5"],
}
TARGET = 0.90


def minutes_to(rows: list[dict[str, str]], target: float) -> float | None:
    for row in rows:
        if float(row["val_dice"]) >= target:
            return float(row["minutes"])
    return None


def run_variant(name: str, data: Path, out: Path, minutes: float | None, recipe: Path) -> dict:
    overrides = VARIANTS[name] + ([f"train.max_minutes={minutes}"] if minutes else [])
    config = load_config(recipe, overrides)
    shutil.rmtree(out, ignore_errors=True)
    summary = train(config, data, out)
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "curves.png", RESULTS / f"quality_{name}.png")
    best = summary["best"]
    return {
        "variant": name, "best_val_dice": best["val_dice"], "best_val_iou": best["val_iou"],
        "best_epoch": summary["best_epoch"], "epochs": summary["epochs"],
        "minutes": summary["train_minutes"], f"minutes_to_{TARGET}": minutes_to(rows, TARGET),
        "s_per_epoch": summary["seconds_per_epoch"], "stopped_by": summary["stopped_by"],
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared folder (default: prepare REAL)")
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "cpu_small.yaml")
    parser.add_argument("--minutes", type=float, help="override train.max_minutes")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("-o", "--out", type=Path, help="run folders (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        data = args.data
        if data is None:
            size = load_config(args.recipe).data.image_size
            data = work / f"prepared{size}"
            prepare_dataset(REAL, data, size=size, val=0.15, test=0.15, seed=42)
        rows = [run_variant(name, data, work / name, args.minutes, args.recipe)
                for name in args.variants.split(",")]
    report("quality", f"{args.recipe.name}: val Dice within the time budget, from random "
           "weights", rows, [
               f"Data: {data} (its own split, 15 % val). Curves: bench/results/quality_*.png.",
               "attention_edge = scSE attention + edge head with boundary loss 0.5.",
           ])


if __name__ == "__main__":
    main(sys.argv[1:])
