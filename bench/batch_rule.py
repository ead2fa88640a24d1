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
from dermaseg.train.batch_rule import scale_for_batch

WORK = Path(__file__).resolve().parent / "work" / "batch_rule"


def train(args: argparse.Namespace, batch: int, seed: int) -> dict:
    """One training run at `batch` with the rule's rate; its summary.json."""
    config = load_config(args.config)
    rule = scale_for_batch(config.optim, config.data.batch_size, batch, args.epochs)
    out = WORK / f"batch{batch}-seed{seed}"
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
    return {"summary": summary, "rule": rule}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a prepared folder")
    parser.add_argument("--config", default="cpu_small")
    parser.add_argument("--batches", default="8,32", help="the recipe's batch first")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for batch in batches:
        runs = [train(args, batch, seed) for seed in seeds]
        dice = [run["summary"]["best"]["val_dice"] for run in runs]
        rule = runs[0]["rule"]
        rows.append({"batch": batch, "lr": rule.lr, "warmup_epochs": rule.warmup_epochs,
                     "val Dice per seed": ", ".join(f"{d:.4f}" for d in dice),
                     "mean val Dice": round(statistics.mean(dice), 4),
                     "images/s": round(statistics.mean(
                         run["summary"]["images_per_s"] for run in runs), 2)})
    base = rows[0]["mean val Dice"]
    for row in rows:
        row["Dice vs recipe batch"] = round(row["mean val Dice"] - base, 4)
    report("batch_rule", f"Learning-rate rule across batch sizes ({args.config}, {args.size} px, "
           f"{args.epochs} epochs, fixed cosine, seeds {args.seeds})", rows,
           [f"python bench/batch_rule.py --data {args.data} --batches {args.batches} "
            f"--seeds {args.seeds} --epochs {args.epochs} --size {args.size}",
            "each batch trains with the rate and warm-up of dermaseg.train.batch_rule; "
            "val Dice is the best epoch's mean per-image Dice on the validation split"])


if __name__ == "__main__":
    main()
