"""The compilation decision of a `dermaseg plan` (its plan.json's "compile"), as a table.

    python bench/gpu_plan_compile.py bench/results/gpu_plan.json

bench/gpu.sh runs it after the plan. Exit status 1 when a plan made on a CUDA GPU has no
compile measurement (the plan measures it there by default), or the file is unreadable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [  # (plan.json "compile" key, label, format)
    ("mode", "torch.compile mode", "{}"),
    ("batch", "batch", "{}"),
    ("eager_step_s", "eager step, s", "{:.4f}"),
    ("compiled_step_s", "compiled step, s", "{:.4f}"),
    ("compile_s", "compiling, s (training + validation)", "{:.1f}"),
    ("validation_compile_s", "of which validation, s", "{:.1f}"),
    ("steps", "the run's steps (max_epochs x steps per epoch)", "{:,}"),
    ("budget_s", "training-step seconds in the budget", "{:.0f}"),
    ("eager_run_s", "estimated step time of the run, eager, s", "{:.0f}"),
    ("compiled_run_s", "estimated step time of the run, compiled, s", "{:.0f}"),
    ("eager_steps", "steps trained, eager", "{:,}"),
    ("compiled_steps", "steps trained, compiled", "{:,}"),
    ("failed", "compilation failed", "{}"),
    ("compile", "train.compile", "{}"),
]


def table(record: dict) -> str:
    lines = ["| measurement | value |", "|---|---|"]
    for key, label, form in ROWS:
        value = record.get(key)
        lines.append(f"| {label} | {'-' if value is None else form.format(value)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        plan = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as exc:
        print(f"{argv[0]}: {exc}", file=sys.stderr)
        return 1
    machine, record = plan.get("machine", {}), plan.get("compile")
    print(f"{argv[0]}: {machine.get('name')} ({machine.get('device')}), "
          f"{plan['dataset']['counts']['train']} training items, "
          f"budget {plan['config']['train']['max_minutes']} min")
    decision = next((d for d in plan["decisions"] if d["name"] == "train.compile"), None)
    if decision is not None:
        print(f"train.compile: {decision['value']}: {decision['reason']}")
    if record is None:
        print("compilation not measured")
        return 1 if machine.get("device") == "cuda" else 0
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
