"""GPU benchmark of the tutorial recipe (DeepLab-v3 ResNet-50, 512x512, batch 8, random weights).

    bash bench/gpu.sh                        # on a machine with one NVIDIA GPU, no network
    python bench/gpu_bench.py --smoke        # tiny sizes on CPU: proves the script runs

Stages (--stages), each in its own process under a time limit (the whole run stays within
--budget-s):
1. training-step throughput on a fixed on-device batch (pure compute) in fp32 eager (PyTorch's
   defaults, and strict: TF32 off), bf16 autocast + channels_last, and with torch.compile
   (bf16_cl_compile: default mode; bf16_cl_graphs: reduce-overhead, CUDA graphs): images/s,
   peak GPU memory, host-device syncs per step, speed-up over fp32 eager;
2. data pipeline (`gpu_loader.py`): the --loader-mode step (default the CUDA-graph one, the
   hardest to keep fed) fed by the recipe's DataLoader and batch hooks on the prepared real
   set, the split and augmentation where the recipe puts them (on a GPU: both on the device);
   GPU busy fraction = pure compute step time / fed step time (1.0: the data never makes the
   GPU wait); the pipeline's own rate, alone; then the other placements and worker counts;
3. a short real training (`dermaseg.train.runner.train`, bf16, ~3 min budget; --train-compile)
   on the real set at 512 px: val Dice, NVML's busy percentage (the whole run, and its
   training steps from the second epoch on), host-device syncs per step.

Real data: $DERMASEG_REAL, else ./local-data/derm-real (a git-ignored folder carried with the
checkout); without it a synthetic set is generated (and the table says so). Results:
bench/results/gpu.json and gpu.md. Imports only dermaseg's training path (no CLI, no server).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, machine, markdown_table
from dermaseg.upload import sync_sites
from gpu_loader import stage_loader
from gpu_monitor import TrainingPhase, UtilizationSampler
from gpu_steps import (
    COMPILE_MODES,
    device_for,
    fixed_batches,
    step_fn,
    synchronize,
    syncs_per_step,
    timed,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "deeplabv3_resnet50_isic"  # a shipped recipe, by name
# fp32: PyTorch's defaults (cuDNN may run convolutions in TF32); fp32_strict: TF32 off;
# bf16_cl_graphs: torch.compile(mode="reduce-overhead"), the model replayed as CUDA graphs.
MODES = ("fp32", "fp32_strict", "bf16_cl", "bf16_cl_compile", "bf16_cl_graphs")
STAGES = ("prepare", *MODES, "loader", "train")
# The CUDA-graph step is timed in the loader stage (it feeds it): compiled once, not twice.
DEFAULT_STAGES = ("prepare", "fp32", "fp32_strict", "bf16_cl", "loader", "train")
STAGE_LIMIT_S = {"prepare": 90, "fp32": 60, "fp32_strict": 60, "bf16_cl": 50,
                 "bf16_cl_compile": 150, "bf16_cl_graphs": 150, "loader": 200}
TRAIN_OVERHEAD_S = 50  # process start, data setup and the final validation of the train stage


def recipe_overrides(smoke: bool) -> list[str]:
    """The recipe with random weights (no network); tiny on CPU for --smoke."""
    base = ["model.pretrained=null", "train.checkpoint_every_steps=0"]
    if smoke:
        base += ["model.backbone=resnet18", "data.image_size=64", "data.batch_size=2",
                 "data.num_workers=0", "model.aspp_channels=32"]
    return base


def stage_throughput(config, device: torch.device, mode: str, steps: int, warmup: int) -> dict:
    step = step_fn(config, device, mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = fixed_batches(config, device)
    first = time.perf_counter()
    step(*next(batches))
    synchronize(device)
    first_s = time.perf_counter() - first
    timed(step, batches, max(0, warmup - 1), device)
    seconds = timed(step, batches, steps, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"mode": mode, "images_per_s": config.data.batch_size / seconds,
            "step_ms": seconds * 1000, "peak_mem_gib": peak, "first_step_s": first_s,
            "syncs_per_step": syncs_per_step(step, batches, device)}


def stage_train(config, data: Path, minutes: float, smoke: bool, compile_mode: str | None
                ) -> dict:
    from dermaseg.config_io import load_config
    from dermaseg.train.callbacks import SyncCounter
    from dermaseg.train.runner import train

    overrides = recipe_overrides(smoke) + [f"train.max_minutes={minutes}",
                                           "train.max_epochs=2" if smoke else
                                           "train.max_epochs=1000",
                                           "train.precision=auto"]
    if compile_mode:
        overrides += ["train.compile=true", f"train.compile_mode={compile_mode}"]
    config = load_config(RECIPE, overrides)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the benchmark needs the numbers, not the plot: an empty curves.png
        import dermaseg.train.history as history

        history.plot_curves = lambda rows: b""
    syncs, busy = SyncCounter(), UtilizationSampler(device_for(smoke))
    phase = TrainingPhase(busy)
    with tempfile.TemporaryDirectory() as out, busy:
        summary = train(config, data, Path(out) / "run", progress=False,
                        callbacks=[syncs, phase])
    best = summary.get("best", {})
    if syncs.stacks:
        print(f"host-device synchronisations in {syncs.steps} training iterations:\n"
              + "\n\n".join(sync_sites(syncs.stacks)), flush=True)
    compiled = f", compile {compile_mode}" if compile_mode else ""
    return {"mode": f"train {config.data.image_size}px, {minutes:.1f} min budget{compiled}",
            "val_dice": best.get("val_dice"), "val_iou": best.get("val_iou"),
            "best_epoch": summary.get("best_epoch"), "epochs": summary.get("epochs"),
            "images_per_s": summary.get("images_per_s"), "precision": summary.get("precision"),
            "minutes": summary.get("train_minutes"), "nvml_busy_pct": busy.mean_percent(),
            "nvml_busy_steps_pct": busy.mean_percent("steps"), "syncs_per_step": syncs.per_step,
            "lightning_step_ms": phase.step_ms(), "time_split": time_split(summary)}


def time_split(summary: dict) -> str | None:
    """summary.json's "time" in one cell: "steps 71%, validation 12%, ... of 95 s"."""
    split = summary.get("time")
    if not split:
        return None
    shares = ", ".join(f"{part} {share:.0%}" for part, share in split["fractions"].items())
    return f"{shares} of {split['total']:.0f} s"


def run_stage(args: argparse.Namespace) -> None:
    """Child process: one stage; its result dict as JSON in args.json."""
    from dermaseg.config_io import load_config

    config = load_config(RECIPE, recipe_overrides(args.smoke))
    device = device_for(args.smoke)
    torch.manual_seed(0)
    if args.stage in MODES:
        result = stage_throughput(config, device, args.stage, args.steps, args.warmup)
    elif args.stage == "loader":
        result = stage_loader(config, device, args.data, args.steps, args.warmup,
                              args.other_workers, args.loader_mode)
    else:
        result = stage_train(config, args.data, args.train_minutes, args.smoke,
                             args.train_compile)
    Path(args.json).write_text(json.dumps(result))


def real_folder() -> Path | None:
    """$DERMASEG_REAL, else ./local-data/derm-real, when it exists."""
    env = os.environ.get("DERMASEG_REAL")
    folder = Path(env) if env else ROOT / "local-data" / "derm-real"
    return folder if folder.is_dir() else None


def stage_prepare(args: argparse.Namespace) -> dict:
    from dermaseg.config_io import load_config
    from dermaseg.data.prepare import prepare_dataset
    from dermaseg.data.synth import SynthOptions, synth_dataset

    size = load_config(RECIPE, recipe_overrides(args.smoke)).data.image_size
    real = None if args.smoke else real_folder()
    source = real
    if real is None:
        source = args.data.parent / "synthetic"
        count, shape = (16, (80, 64)) if args.smoke else (160, (640, 480))
        synth_dataset(count, source, seed=0, options=SynthOptions(size=shape), progress=False)
    manifest = prepare_dataset(source, args.data, size=size, val=0.15, test=0.15, seed=42,
                               progress=False)
    return {"source": "synthetic" if real is None else str(real), "size": size,
            "counts": manifest["counts"]}


def _child(name: str, args: argparse.Namespace, limit: float, extra: list[str]) -> tuple:
    """Run one stage in a child process; (result dict or None, status text)."""
    if limit < 5:
        return None, "skipped: out of time"
    out = args.data.parent / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--json",
               str(out), "--data", str(args.data), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--loader-workers", ",".join(map(str, args.other_workers)),
               "--loader-mode", args.loader_mode, "--stages", ",".join(sorted(args.stages)),
               *(["--train-compile", args.train_compile] if args.train_compile else []),
               *(["--smoke"] if args.smoke else []), *extra]
    print(f"\n--- {name} (limit {limit:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        code = subprocess.run(command, timeout=limit).returncode
    except subprocess.TimeoutExpired:
        return None, f"stopped at its {limit:.0f} s limit"
    seconds = time.monotonic() - start
    if code != 0 or not out.is_file():
        return None, f"failed (exit status {code}) after {seconds:.0f} s"
    result = json.loads(out.read_text())
    print(f"{name}: {result}", flush=True)
    return result, f"ok in {seconds:.0f} s"


def run_all_stages(args: argparse.Namespace) -> tuple[dict, dict]:
    deadline = time.monotonic() + args.budget_s

    def left() -> float:
        return deadline - time.monotonic()

    results, status = {}, {}
    for name in ("prepare", *MODES, "loader"):
        if name not in args.stages:
            continue
        if name in COMPILE_MODES and args.no_compile:
            status[name] = "skipped: --smoke or --no-compile"
            continue
        if name == "loader" and results.get("prepare") is None:
            status[name] = "skipped: no prepared data"
            continue
        results[name], status[name] = _child(name, args, min(STAGE_LIMIT_S[name], left()), [])
    minutes = min(args.train_minutes, (left() - TRAIN_OVERHEAD_S) / 60)
    if "train" not in args.stages:
        pass
    elif results.get("prepare") is None or minutes < (0.05 if args.smoke else 0.5):
        status["train"] = "skipped: no prepared data or out of time"
    else:
        results["train"], status["train"] = _child(
            "train", args, left() - 5, ["--train-minutes", f"{minutes:.2f}"])
    return results, status


def write_results(results: dict, status: dict, args: argparse.Namespace) -> dict:
    fp32 = results.get("fp32")
    rows = []
    for mode in MODES:
        row = results.get(mode)
        if row is not None:
            if fp32 is not None:
                row["speedup_vs_fp32"] = row["images_per_s"] / fp32["images_per_s"]
            rows.append(row)
    loader = results.get("loader") or {}
    if args.loader_mode not in results and loader.get("mode", "").startswith(args.loader_mode):
        batch = round(loader["images_per_s"] * loader["fed_step_ms"] / 1000)
        rows.append({"mode": f"{args.loader_mode} (timed in the loader stage)",
                     "images_per_s": batch * 1000 / loader["compute_step_ms"],
                     "step_ms": loader["compute_step_ms"]})
        if fp32 is not None:
            rows[-1]["speedup_vs_fp32"] = rows[-1]["images_per_s"] / fp32["images_per_s"]
    info = machine()
    info["device_used"] = str(device_for(args.smoke))
    loader = dict(results.get("loader") or {})
    loader_rows = [loader, *loader.pop("by_workers", [])] if loader else []
    payload = {"name": "gpu", "machine": info, "smoke": args.smoke, "data": results.get("prepare"),
               "throughput": rows, "loader": results.get("loader"), "train": results.get("train"),
               "stages": status, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.results.mkdir(parents=True, exist_ok=True)
    name = "gpu_smoke" if args.smoke else "gpu"
    (args.results / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    device = info.get("gpu", info["cpu"])
    config = "ResNet-18 64 px batch 2 (smoke)" if args.smoke else \
        "DeepLab-v3 ResNet-50 512x512 batch 8, random weights"
    tables = [rows, loader_rows, [results["train"]] if results.get("train") else []]
    text = (f"### GPU training: {config} on {device}\n\n"
            + "".join(f"{markdown_table(table)}\n\n" for table in tables if table)
            + f"- Data: {(results.get('prepare') or {}).get('source', 'none')}.\n"
            "- fp32 = PyTorch defaults (cuDNN may use TF32 for convolutions), fp32_strict = "
            "TF32 off; speed-ups are "
            "images/s against fp32 eager in the same run; busy fraction = pure compute step "
            "time / step time fed by the real DataLoader and batch hooks (gather_on device: "
            "the training split kept on the GPU, the loader yields indices).\n"
            + "".join(f"- {stage}: {text}\n" for stage, text in status.items()))
    (args.results / f"{name}.md").write_text(text)
    print("\n" + text)
    return payload


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, 2 steps")
    parser.add_argument("--steps", type=int, help="timed steps (default 30; smoke 2)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 5; smoke 1)")
    parser.add_argument("--budget-s", type=float, default=440, help="whole run, seconds")
    parser.add_argument("--train-minutes", type=float, help="default 3 (smoke 0.1)")
    parser.add_argument("--no-compile", action="store_true",
                        help="no torch.compile anywhere (the loader stage feeds bf16_cl)")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated, of {', '.join(STAGES)} "
                             f"(default {','.join(DEFAULT_STAGES)})")
    parser.add_argument("--loader-mode", choices=MODES, default="bf16_cl_graphs",
                        help="the training step the loader feeds (default bf16_cl_graphs, "
                             "the fastest: the hardest to keep fed)")
    parser.add_argument("--train-compile", choices=("default", "reduce-overhead"),
                        help="train stage with train.compile=true in this mode")
    parser.add_argument("--loader-workers", help="other DataLoader worker counts to measure "
                        "beside the recipe's, comma-separated (default 4,12; smoke 1)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stage", choices=("prepare", *MODES, "loader", "train"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.smoke else 30)
    args.warmup = args.warmup or (1 if args.smoke else 5)
    args.train_minutes = args.train_minutes or (0.1 if args.smoke else 3.0)
    args.no_compile = args.no_compile or args.smoke
    if args.no_compile and args.loader_mode in COMPILE_MODES:
        args.loader_mode = "bf16_cl"
    args.stages = {name.strip() for name in args.stages.split(",") if name.strip()}
    if not args.stages <= set(STAGES):
        parser.error(f"--stages: unknown {', '.join(sorted(args.stages - set(STAGES)))}")
    args.stages.add("prepare")
    text = args.loader_workers if args.loader_workers is not None else \
        ("1" if args.smoke else "4,12")
    try:
        args.other_workers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--loader-workers {text!r}: expected numbers separated by commas")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.smoke:
        torch.set_num_threads(1)  # a smoke test on a shared CPU: one core, no oversubscription
    if args.stage == "prepare":
        Path(args.json).write_text(json.dumps(stage_prepare(args)))
        return 0
    if args.stage:
        run_stage(args)
        return 0
    device = device_for(args.smoke)
    print(f"torch {torch.__version__}, device {device}"
          + (f": {torch.cuda.get_device_name(0)}" if device.type == "cuda" else ""), flush=True)
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: this is the GPU benchmark (use --smoke to try it on CPU)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as work:
        args.data = Path(work) / "prepared"
        results, status = run_all_stages(args)
    payload = write_results(results, status, args)
    return 0 if all(text.startswith(("ok", "skipped: --smoke")) for text in
                    payload["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
