"""GPU benchmark of the tutorial recipe (DeepLab-v3 ResNet-50, 512x512, batch 8, random weights).

    bash bench/gpu.sh                        # on a machine with one NVIDIA GPU, no network
    python bench/gpu_bench.py --smoke        # tiny sizes on CPU: proves the script runs

Stages, each in its own process under a time limit (the whole run stays within --budget-s):
1. training-step throughput on a fixed on-device batch (pure compute) in fp32 eager (PyTorch's
   defaults, and strict: TF32 off), bf16 autocast + channels_last, and the same with
   torch.compile: images/s, peak GPU memory, speed-up over fp32 eager;
2. data-loader check: bf16 + channels_last steps fed by the recipe's real DataLoader (workers,
   pin_memory, augmentation on the GPU) on the prepared real set; GPU busy fraction = pure
   compute step time / fed step time (1.0: the loader never makes the GPU wait); and the
   loader's own rate, alone; the same with the augmentation in the loader workers;
3. a short real training (`dermaseg.train.runner.train`, bf16, ~3 min budget) on the real set
   at 512 px, printing its val Dice.

Real data: $DERMASEG_REAL, else ./local-data/derm-real (a git-ignored folder carried with the
checkout); without it a synthetic set is generated (and the table says so). Results:
bench/results/gpu.json and gpu.md. Imports only dermaseg's training path (no CLI, no server).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from common import RESULTS, machine, markdown_table
from dermaseg.data.upload import count_syncs, sync_sites

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "deeplabv3_resnet50_isic.yaml"
# fp32: PyTorch's defaults (cuDNN may run convolutions in TF32); fp32_strict: TF32 off;
# bf16_cl_graphs: torch.compile(mode="reduce-overhead"), the model replayed as CUDA graphs.
MODES = ("fp32", "fp32_strict", "bf16_cl", "bf16_cl_compile", "bf16_cl_graphs")
COMPILE_MODES = {"bf16_cl_compile": "default", "bf16_cl_graphs": "reduce-overhead"}
STAGES = ("prepare", *MODES, "loader", "train")
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


def device_for(smoke: bool) -> torch.device:
    return torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step_fn(config, device: torch.device, mode: str):
    """A training step (forward, Dice+BCE, backward, Adam as training builds it: fused on a
    GPU) of the recipe's model in `mode`."""
    from dermaseg.losses import SegmentationLoss
    from dermaseg.models.factory import build_model
    from dermaseg.train.module import build_optimizer

    if mode == "fp32_strict":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model(config.model).to(device).train()
    channels_last = mode.startswith("bf16")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, mode=COMPILE_MODES[mode]) if mode in COMPILE_MODES else model
    criterion = SegmentationLoss(config.loss)
    optimizer = build_optimizer(config.optim, model)

    def step(images: torch.Tensor, masks: torch.Tensor) -> None:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=channels_last):
            loss, _ = criterion(forward(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _timed(step, batches, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps drawn from the iterator `batches`."""
    if steps <= 0:
        return 0.0
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def _fixed_batches(config, device: torch.device):
    size, batch = config.data.image_size, config.data.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    while True:
        yield images, masks


def stage_throughput(config, device: torch.device, mode: str, steps: int, warmup: int) -> dict:
    step = _step_fn(config, device, mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = _fixed_batches(config, device)
    first = time.perf_counter()
    step(*next(batches))
    _synchronize(device)
    first_s = time.perf_counter() - first
    _timed(step, batches, max(0, warmup - 1), device)
    seconds = _timed(step, batches, steps, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"mode": mode, "images_per_s": config.data.batch_size / seconds,
            "step_ms": seconds * 1000, "peak_mem_gib": peak, "first_step_s": first_s,
            "syncs_per_step": _syncs_per_step(step, batches, device)}


def _loader_batches(loader, device: torch.device, config):
    """The loader's uint8 batches on the device, augmented there when `data.augment_on` says
    so and normalised, as the training module's batch hooks do."""
    from dermaseg.data.device_augment import DeviceAugment, augment_on_device
    from dermaseg.data.transforms import normalise_images
    from dermaseg.train.datamodule import sample_seed

    size, seed = config.data.image_size, config.train.seed
    augment = DeviceAugment(config.data.augment, size, size) \
        if augment_on_device(config.data.augment_on, device.type == "cuda") else None
    epoch = 0
    while True:
        for images, masks, indices in loader:
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            if augment is not None:
                params = augment.draw([sample_seed(seed, epoch, i) for i in indices.tolist()])
                images, masks = augment.apply(images, masks, params)
            yield normalise_images(images, config.data.mean, config.data.std), masks.float()
        epoch += 1


def _syncs_per_step(step, batches, device: torch.device, steps: int = 3) -> float | None:
    """Host-device synchronisations per step (batch hooks, augmentation and training step):
    each one makes the CPU wait for the GPU's queue to drain, leaving the GPU idle while the
    CPU then prepares the next work."""
    if device.type != "cuda":
        return None
    with count_syncs() as syncs:
        for _ in range(steps):
            step(*next(batches))
    return len(syncs) / steps


def _fed_row(config, data: Path, device: torch.device, step, compute: float, steps: int,
             warmup: int) -> dict:
    """Steps fed by the recipe's DataLoader (`config.data.num_workers`), then the loader alone."""
    from dermaseg.train.datamodule import SegmentationDataModule

    module = SegmentationDataModule(config, data)
    module.setup("fit")
    loader = module.train_dataloader()
    fed = _loader_batches(loader, device, config)
    _timed(step, fed, warmup, device)
    fed_s = _timed(step, fed, steps, device)
    syncs = _syncs_per_step(step, fed, device)
    # The loader alone: first empty the batches prefetched while the GPU worked, then time.
    buffered = loader.num_workers * (loader.prefetch_factor or 0)
    _timed(lambda *batch: None, fed, buffered + warmup, device)
    alone_s = _timed(lambda *batch: None, fed, max(steps, 3 * buffered), device)
    return {"workers": loader.num_workers, "pin_memory": loader.pin_memory,
            "compute_step_ms": compute * 1000, "fed_step_ms": fed_s * 1000,
            "images_per_s": config.data.batch_size / fed_s,
            "loader_alone_images_per_s": config.data.batch_size / alone_s,
            "gpu_busy_fraction": min(1.0, compute / fed_s), "syncs_per_step": syncs}


def stage_loader(config, device: torch.device, data: Path, steps: int, warmup: int,
                 other_workers: list[int], loader_mode: str) -> dict:
    """The recipe's loader (the goal's figure; augmentation on the device on a GPU), the same
    with the augmentation on the other side, then with `other_workers` workers."""
    mode = loader_mode if device.type == "cuda" else "fp32"  # CPU bf16 is slow, off the point
    step = _step_fn(config, device, mode)
    fixed = _fixed_batches(config, device)
    _timed(step, fixed, warmup, device)
    compute = _timed(step, fixed, steps, device)

    def variant(label: str, **data_fields) -> dict:
        changed = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                       **data_fields))
        return {"mode": f"{mode}, {label}",
                **_fed_row(changed, data, device, step, compute, steps, warmup)}

    row = {"mode": f"{mode} fed by the recipe's DataLoader, augment_on "
                   f"{config.data.augment_on}",
           **_fed_row(config, data, device, step, compute, steps, warmup)}
    from dermaseg.data.device_augment import augment_on_device

    other = "loader" if augment_on_device(config.data.augment_on, device.type == "cuda") \
        else "device"
    row["by_workers"] = [variant(f"augment_on {other}", augment_on=other)]
    row["by_workers"] += [variant(f"{workers} workers", num_workers=workers)
                          for workers in other_workers]
    return row


def stage_train(config, data: Path, minutes: float, smoke: bool, compile_mode: str | None
                ) -> dict:
    from dermaseg.config import load_config
    from dermaseg.train.callbacks import SyncCounter
    from dermaseg.train.runner import train

    overrides = recipe_overrides(smoke) + [f"train.max_minutes={minutes}",
                                           "train.max_epochs=1" if smoke else
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
    syncs = SyncCounter()
    with tempfile.TemporaryDirectory() as out, UtilizationSampler(device_for(smoke)) as busy:
        summary = train(config, data, Path(out) / "run", progress=False, callbacks=[syncs])
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
            "syncs_per_step": syncs.per_step}


class UtilizationSampler:
    """NVML's GPU utilisation (the share of time a kernel was running) sampled every 0.2 s in a
    thread while the block runs: the whole training, its validation and checkpoints included."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # no NVML (pynvml missing or refused): no figure, not a failure
                return

    def __enter__(self) -> UtilizationSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean_percent(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def run_stage(args: argparse.Namespace) -> None:
    """Child process: one stage; its result dict as JSON in args.json."""
    from dermaseg.config import load_config

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
    from dermaseg.config import load_config
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
    text = (f"### GPU training: {config} on {device}\n\n{markdown_table(rows)}\n\n"
            f"{markdown_table(loader_rows)}\n\n"
            f"{markdown_table([results['train']] if results.get('train') else [])}\n\n"
            f"- Data: {(results.get('prepare') or {}).get('source', 'none')}.\n"
            "- fp32 = PyTorch defaults (cuDNN may use TF32 for convolutions), fp32_strict = "
            "TF32 off; speed-ups are "
            "images/s against fp32 eager in the same run; busy fraction = pure compute step "
            "time / step time fed by the real DataLoader.\n"
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
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated, of {', '.join(STAGES)} (default all)")
    parser.add_argument("--loader-mode", choices=MODES, default="bf16_cl",
                        help="the training step the loader feeds (default bf16_cl)")
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
