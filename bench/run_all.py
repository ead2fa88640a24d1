"""`make bench`: every benchmark in turn, then bench/results/SUMMARY.md.

    python bench/run_all.py              # modest settings: finishes in a bounded time on 2 cores
    python bench/run_all.py --full       # each script's own defaults (quality: 18 min a variant)
    python bench/run_all.py --only quality,train

Each script runs in its own process with a time limit; one that fails or runs over is reported
and the others still run; the exit status is 1 when any failed. SUMMARY.md gathers every
bench/results/*.md table (also those of earlier runs, each with the time it was measured) under
a line describing this machine. On a machine with CUDA the GPU benchmark runs as well.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, machine

BENCH = Path(__file__).resolve().parent
# name -> (script, arguments with --quick (the default), arguments with --full)
SCRIPTS = {
    "data": ("bench_data.py", [], []),
    "augment": ("bench_augment_cost.py", ["--rounds", "3"], []),
    "model": ("bench_model.py", ["--rounds", "5"], []),
    "train": ("bench_train.py", ["--quick"], []),
    "infer": ("bench_infer.py", ["--repeats", "5"], []),
    "predict_large": ("bench_predict_large.py", ["--repeats", "2"], []),
    "serve": ("bench_serve.py", ["--requests", "200"], []),
    "footprint": ("bench_footprint.py", ["--repeats", "2"], []),
    # quick quality runs (1 min a variant) prove the pipeline; they must not replace the
    # 18-minute results the README quotes, so they go to results/quick/
    "quality": ("bench_quality.py", ["--quick", "--results", str(RESULTS / "quick")], []),
    "gpu": ("gpu_bench.py", [], []),
}
LIMIT_MINUTES = {"quick": 20.0, "full": 90.0}  # per script


def run_script(name: str, full: bool) -> tuple[bool, str]:
    """Run one benchmark script; (ok, one-line outcome)."""
    script, quick_args, full_args = SCRIPTS[name]
    path = BENCH / script
    if not path.is_file():
        return False, f"{script}: not found"
    if name == "gpu" and not _has_cuda():
        return True, "skipped: no CUDA device (run bench/gpu.sh on a GPU machine)"
    limit = LIMIT_MINUTES["full" if full else "quick"] * 60
    command = [sys.executable, str(path), *(full_args if full else quick_args)]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    try:
        code = subprocess.run(command, cwd=BENCH.parent, timeout=limit).returncode
    except subprocess.TimeoutExpired:
        return False, f"over its {limit / 60:g}-minute limit, stopped"
    minutes = (time.perf_counter() - start) / 60
    if code != 0:
        return False, f"failed with exit status {code} after {minutes:.1f} min"
    return True, f"ok in {minutes:.1f} min"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _measured_at(md: Path) -> str:
    try:
        return json.loads(md.with_suffix(".json").read_text()).get("time", "?")
    except (OSError, ValueError):
        return "?"


def write_summary(outcomes: dict[str, tuple[bool, str]]) -> Path:
    """bench/results/SUMMARY.md: machine, this run's outcomes, then every table."""
    info = machine()
    line = ", ".join(f"{k}: {v}" for k, v in info.items())
    parts = ["# dermaseg benchmarks", "", f"Machine: {line}", "",
             f"Run of {time.strftime('%Y-%m-%d %H:%M:%S')}:", ""]
    parts += [f"- {name}: {'ok' if ok else 'FAILED'} ({text})"
              for name, (ok, text) in outcomes.items()]
    quick = sorted((RESULTS / "quick").glob("*.md"))
    for md in sorted(RESULTS.glob("*.md")) + quick:
        if md.name == "SUMMARY.md":
            continue
        name = md.relative_to(RESULTS).as_posix()
        if md in quick:
            parts += ["", "Quick run (pipeline check, not a quality figure):"]
        parts += ["", md.read_text().rstrip(), f"\n_{name}, measured {_measured_at(md)}._"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "SUMMARY.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    tmp.replace(path)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each script's full settings")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    outcomes = {name: run_script(name, args.full) for name in names}
    path = write_summary(outcomes)
    print(f"\n{path.read_text()}")
    failed = [name for name, (ok, _) in outcomes.items() if not ok]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
