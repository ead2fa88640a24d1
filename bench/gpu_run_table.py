"""The two trainings of bench/gpu_run.sh as a table: measured, and carried over the planned run.

    python bench/gpu_run_table.py PLAN.json PLANNED_RUN/ BEFORE_RUN/ [--name gpu_run]

Each run folder's metrics.csv holds every epoch's seconds (training and validation). A run of
E epochs is measured as: whole-run images/s (E x training items / the run's seconds from the
first epoch's start to the last validation's end), the steady epoch (the median of the epochs
after the first) and the first epoch's excess over it (compilation, CUDA graph capture, the
loader's start). Carried over the planned run (the plan's train.max_epochs, N): first epoch +
(N - 1) x steady epoch, so the excess is paid once. "of the compiled step" is that whole-run
rate over the isolated compiled step's (batch / the plan's measured compiled step).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from common import report


def measure(run: Path, items: int, planned_epochs: int) -> dict:
    """Measured and carried-over figures of one training run folder."""
    with (run / "metrics.csv").open() as stream:
        seconds = [float(row["seconds"]) for row in csv.DictReader(stream)]
    if len(seconds) < 2:
        raise SystemExit(f"{run}/metrics.csv: needs at least 2 epochs, has {len(seconds)}")
    steady = statistics.median(seconds[1:])
    whole = seconds[0] + (planned_epochs - 1) * steady
    summary = json.loads((run / "summary.json").read_text())
    return {"epochs": len(seconds), "run_s": round(sum(seconds), 1),
            "images/s over the run": round(items * len(seconds) / sum(seconds), 1),
            "first epoch s": round(seconds[0], 2), "steady epoch s": round(steady, 2),
            "first-epoch excess s": round(seconds[0] - steady, 1),
            "training images/s (steady)": round(summary["images_per_s"], 1),
            f"planned run ({planned_epochs} epochs), min": round(whole / 60, 1),
            "images/s over the planned run": round(items * planned_epochs / whole, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("planned", type=Path)
    parser.add_argument("before", type=Path)
    parser.add_argument("--name", default="gpu_run")
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    items, epochs = plan["dataset"]["counts"]["train"], plan["config"]["train"]["max_epochs"]
    rows = [{"path": "plan, then train (compile as planned)",
             **measure(args.planned, items, epochs)},
            {"path": "before: eager, validation at the training batch",
             **measure(args.before, items, epochs)}]
    record, planned = plan.get("compile") or {}, rows[0]["images/s over the planned run"]
    rows[0]["vs before"] = round(planned / rows[1]["images/s over the planned run"], 2)
    compiled_step = record.get("compiled_step_s")
    if compiled_step:
        rows[0]["of the compiled step"] = round(planned / (record["batch"] / compiled_step), 2)
    machine = plan["machine"]
    report(args.name, f"plan then train on {machine.get('name')}: {items} training images at "
           f"{plan['dataset']['prepared_size']} px", rows,
           [f"the plan: batch {plan['config']['data']['batch_size']}, train.compile "
            f"{plan['config']['train']['compile']}, lr {plan['config']['optim']['lr']}",
            "bash bench/gpu_run.sh (goal: >= 2.5x before, >= 80 % of the compiled step)",
            "speed only: a few epochs of the planned run are its learning-rate warm-up, so their "
            "val Dice says nothing of the rule (bench/batch_rule.py checks that)"])


if __name__ == "__main__":
    main()
