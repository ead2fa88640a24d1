"""Quality within a time budget on the real images: the cpu_small recipe with and without
the attention block + edge head, beside a peer (segmentation_models_pytorch's DeepLabV3
ResNet-50 with the tutorial's recipe) and a classical Otsu baseline, all on one prepared split.

    python bench/bench_quality.py                       # prepares ../shared/data/derm-real
    python bench/bench_quality.py --data prep-real/ --minutes 18 --variants base,attention_edge
    python bench/bench_quality.py --data prep-real/ --minutes 18 --variants smp --threads 1

Each trained variant starts from random weights with the same wall-clock budget
(train.max_minutes, or --minutes) on the prepared set's own train/val split (15 % val) and
reports its best val Dice/IoU/threshold-Jaccard, the minutes until val Dice first reached 0.87
and 0.90, and its curve (bench/results/quality_<variant>.png). Every invocation merges its
rows into bench/results/quality.json by variant, so variants run one after the other (or two
at once with --threads 1 each) build one table. Long: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import common
from dermaseg.config_io import load_config
from dermaseg.data.prepare import prepare_dataset
from dermaseg.train.runner import train
from quality_peers import TARGETS, minutes_to, run_otsu, run_smp

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("DERMASEG_REAL", ROOT.parent / "shared" / "data" / "derm-real"))
VARIANTS = {
    "base": [],
    "attention_edge": ["model.attention=scse", "model.edge_head=true", "loss.boundary=0.5"],
}
PEERS = ("smp", "otsu")
QUICK_MINUTES = 1.0  # per trained variant with --quick (make bench): proves the runs, not quality


def run_variant(name: str, data: Path, out: Path, minutes: float | None, recipe: str,
                extra: list[str]) -> dict:
    overrides = VARIANTS[name] + extra + ([f"train.max_minutes={minutes}"] if minutes else [])
    config = load_config(recipe, overrides)
    shutil.rmtree(out, ignore_errors=True)
    summary = train(config, data, out)
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "curves.png", common.RESULTS / f"quality_{name}.png")
    best = summary["best"]
    return {
        "variant": name, "best_val_dice": best["val_dice"], "best_val_iou": best["val_iou"],
        "best_val_threshold_jaccard": best.get("val_threshold_jaccard"),
        "best_epoch": summary["best_epoch"], "epochs": summary["epochs"],
        "minutes": round(summary["train_minutes"], 2),
        **{f"minutes_to_{t}": minutes_to(rows, t) for t in TARGETS},
        "s_per_epoch": round(summary["seconds_per_epoch"], 1), "stopped_by": summary["stopped_by"],
    }


def merged_rows(new: list[dict]) -> list[dict]:
    """Rows of an earlier quality.json, with those of the same variant replaced by `new`."""
    path = common.RESULTS / "quality.json"
    old: list[dict] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("rows", [])
        except (OSError, ValueError):
            old = []
    names = {row["variant"] for row in new}
    order = [*VARIANTS, "smp", "otsu_blue", "otsu_grey"]
    rows = [row for row in old if row.get("variant") not in names] + new
    return sorted(rows, key=lambda r: order.index(r["variant"]) if r["variant"] in order else 99)


def run(name: str, data: Path, work: Path, args: argparse.Namespace, minutes: float) -> list[dict]:
    if name in VARIANTS:
        return [run_variant(name, data, work / name, minutes, args.recipe, args.set or [])]
    if name == "smp":
        return [run_smp(data, minutes, common.RESULTS, size=args.smp_size)]
    return run_otsu(data)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared folder (default: prepare REAL)")
    parser.add_argument("--recipe", default="cpu_small",
                        help="a recipe file or a shipped recipe's name")
    parser.add_argument("--minutes", type=float, help="budget per trained variant "
                        "(default: the recipe's train.max_minutes)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MINUTES} minute per trained variant (unless --minutes)")
    parser.add_argument("--variants", default=",".join([*VARIANTS, *PEERS]))
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    parser.add_argument("--smp-size", type=int, default=256, help="the peer's input side")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="extra recipe override for the dermaseg variants (repeatable)")
    parser.add_argument("--results", type=Path, help="results folder (default: bench/results)")
    parser.add_argument("-o", "--out", type=Path, help="run folders (default: a temp folder)")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS and n not in PEERS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; "
                     f"choose from {', '.join([*VARIANTS, *PEERS])}")
    args.names = names
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.results:
        common.RESULTS = args.results
    recipe = load_config(args.recipe, args.set or [])
    minutes = args.minutes or (QUICK_MINUTES if args.quick else recipe.train.max_minutes)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        data = args.data
        if data is None:
            size = recipe.data.image_size
            data = work / f"prepared{size}"
            prepare_dataset(REAL, data, size=size, val=0.15, test=0.15, seed=42)
        rows = [row for name in args.names for row in run(name, data, work, args, minutes)]
    with open(Path(tempfile.gettempdir()) / "dermaseg-bench-quality.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two invocations at once merge one after the other
        report(args, data, minutes, merged_rows(rows))


def report(args: argparse.Namespace, data: Path, minutes: float, rows: list[dict]) -> None:
    common.report("quality", f"{Path(args.recipe).stem}: val quality within {minutes:g} min per "
                  "trained variant, from random weights", rows, [
                      f"Data: {data} (its own split, 15 % val). Curves: "
                      "bench/results/quality_*.png. Rows merged across invocations by variant.",
                      "attention_edge = scSE attention + edge head with boundary loss 0.5.",
                      f"smp = segmentation_models_pytorch DeepLabV3 ResNet-50 (OS 16, ASPP "
                      f"6/12/18, random weights), {args.smp_size} px, Adam 1e-4, batch 8, "
                      "Dice+BCE, flips; val at the prepared resolution like dermaseg's.",
                      "otsu_* = Otsu threshold on the blurred blue / grey channel + largest "
                      "component + hole filling, no training.",
                      f"Threads: {torch.get_num_threads()}.",
                  ])


if __name__ == "__main__":
    main(sys.argv[1:])
