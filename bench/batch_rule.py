"""Does the plan's learning-rate rule (dermaseg.train.batch_rule) keep the validation Dice when
the batch grows? Trains a recipe at its own batch and at larger ones, each with the rate and
warm-up the rule gives, for the same number of epochs on a fixed cosine schedule (the machine's
load changes the time, not the result), and reports the best val Dice and the images/s.

    python bench/batch_rule.py --data local-data/prep-real --batches 8,32 --seeds 1,2
    # -> bench/results/batch_rule.md, .json (runs under bench/work/batch_rule/)

On a CPU a larger batch is not faster (see `dermaseg plan`'s probe); this checks the rule's
quality side, which is the same on any device. The GPU run is bench/gpu.sh's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from common import report
from dermaseg.config_io import load_config
from dermaseg.train.batch_rule import BatchRule, scale_for_batch

WORK = Path(__file__).resolve().parent / "work" / "batch_rule"


def train(args: argparse.Namespace, batch: int, seed: int, rule: BatchRule, name: str) -> dict:
    """One training run at `batch` with `rule`'s rate and warm-up; its summary.json (an
    earlier run's with --reuse)."""
    out = WORK / f"{name}-seed{seed}"
    if args.reuse and (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    sets = {**rule.overrides(), "data.batch_size": batch, "train.max_epochs": args.epochs,
            "train.seed": seed, "optim.scheduler": "cosine",
            "optim.anneal_by_time": "false", "train.max_minutes": 600,
            "train.early_stop_patience": 1000, "train.fit_quality": "false",
            "data.image_size": args.size}
    command = [sys.executable, "-m", "dermaseg", "train", "--config", args.config,
               "--data", args.data, "-o", str(out), "-q"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    shutil.rmtree(out, ignore_errors=True)  # a run of an earlier bench
    log = out.with_suffix(".log")
    with log.open("w") as stream:
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"training at batch {batch} failed: see {log}")
    summary = json.loads((out / "summary.json").read_text())
    print(f"batch {batch}, seed {seed}: val Dice {summary['best']['val_dice']:.4f}, "
          f"{summary['images_per_s']:.1f} images/s ({rule.reason})", flush=True)
    return summary


def variants(args: argparse.Namespace) -> list[tuple[str, int, BatchRule, str]]:
    """(run name, batch, rule, label): each batch with the rule; with --unscaled, each larger
    batch also with the recipe's own rate and warm-up (the control)."""
    recipe = load_config(args.config)
    optim, recipe_batch = recipe.optim, recipe.data.batch_size
    batches = [int(b) for b in args.batches.split(",")]
    runs = []
    for batch in batches:
        runs.append((f"batch{batch}", batch,
                     scale_for_batch(optim, recipe_batch, batch, args.epochs), "the rule"))
        if args.unscaled and batch != recipe_batch:
            runs.append((f"batch{batch}-unscaled", batch,
                         BatchRule(optim.lr, optim.warmup_epochs, "the recipe's rate"),
                         "the recipe's rate (control)"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a prepared folder")
    parser.add_argument("--config", default="cpu_small")
    parser.add_argument("--batches", default="8,32", help="the recipe's batch first")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--unscaled", action="store_true",
                        help="also train each larger batch at the recipe's rate (a control)")
    parser.add_argument("--reuse", action="store_true", help="keep runs already in the work "
                        "folder (same options) instead of training them again")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name, batch, rule, label in variants(args):
        summaries = [train(args, batch, seed, rule, name) for seed in seeds]
        dice = [summary["best"]["val_dice"] for summary in summaries]
        rows.append({"batch": batch, "rate": label, "lr": rule.lr,
                     "warmup_epochs": rule.warmup_epochs,
                     "val Dice per seed": ", ".join(f"{d:.4f}" for d in dice),
                     "mean val Dice": round(statistics.mean(dice), 4),
                     "images/s": round(statistics.mean(s["images_per_s"] for s in summaries), 2)})
    base = rows[0]["mean val Dice"]
    for row in rows:
        row["Dice vs recipe batch"] = round(row["mean val Dice"] - base, 4)
    report("batch_rule", f"Learning-rate rule across batch sizes ({args.config}, {args.size} px, "
           f"{args.epochs} epochs, fixed cosine, seeds {args.seeds})", rows,
           [f"python bench/batch_rule.py --data {args.data} --batches {args.batches} "
            f"--seeds {args.seeds} --epochs {args.epochs} --size {args.size}"
            + (" --unscaled" if args.unscaled else ""),
            "the rule: the rate and warm-up of dermaseg.train.batch_rule for the batch; val Dice "
            "is the best epoch's mean per-image Dice on the validation split; the same epochs "
            "for every batch, so a larger batch takes fewer optimiser steps"])


if __name__ == "__main__":
    main()
