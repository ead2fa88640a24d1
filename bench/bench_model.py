"""Model speed and size: dermaseg DeepLab-v3 ResNet-50 vs segmentation_models_pytorch, variants.

1. Forward time at 512x512 on CPU (batch 1, eval, no_grad) of dermaseg's DeepLab-v3 ResNet-50
   (output stride 16, rates 6/12/18) and smp's `DeepLabV3(encoder_name="resnet50", ...)`, in one
   process, alternating the two so that machine load hits both alike; median of the rounds.
2. Parameter count and forward time at 256x256 of every backbone x arch x option.

Run: `.venv/bin/python bench/bench_model.py [--rounds 7] [--skip-variants]`
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from common import machine, report
from dermaseg.config import ModelConfig
from dermaseg.models import BACKBONES, build_model

OPTIONS = {"plain": {}, "attention": {"attention": "scse"}, "edge": {"edge_head": True}}


def count(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def timed(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward; CPU time is what machine load on a
    shared box distorts least."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def versus_smp(rounds: int) -> tuple[list[dict], list[str]]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    ours = build_model(ModelConfig(arch="deeplabv3", backbone="resnet50", output_stride=16)).eval()
    theirs = smp.DeepLabV3(encoder_name="resnet50", encoder_weights=None,
                           encoder_output_stride=16, decoder_atrous_rates=(6, 12, 18),
                           classes=1).eval()
    x = torch.randn(1, 3, 512, 512)
    for model in (ours, theirs):  # warm-up: oneDNN kernel creation, allocator
        timed(model, x)
        timed(model, x)
    times: dict[str, list[tuple[float, float]]] = {"dermaseg": [], "smp": []}
    for i in tqdm(range(rounds), desc="512x512 rounds"):
        order = [("dermaseg", ours), ("smp", theirs)]
        for name, model in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(model, x))
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    fastest = {k: min(t[0] for t in v) for k, v in times.items()}
    rows = [
        {"model": label, "params_M": count(model), "median_wall_s_512": wall[key],
         "min_wall_s_512": fastest[key], "median_cpu_s_512": cpu[key]}
        for key, label, model in (("dermaseg", "dermaseg DeepLab-v3 R50 OS16", ours),
                                  ("smp", "smp DeepLabV3 R50 OS16", theirs))
    ]
    pairs = [a[0] / b[0] for a, b in zip(times["dermaseg"], times["smp"], strict=True)]
    notes = [
        f"ratio dermaseg/smp, median wall time of {rounds} alternating rounds (batch 1, eval, "
        f"no_grad, {torch.get_num_threads()} threads): {wall['dermaseg'] / wall['smp']:.3f} "
        f"(goal <= 1.05)",
        f"same ratio from process CPU time: {cpu['dermaseg'] / cpu['smp']:.3f}; from the "
        f"fastest run: {fastest['dermaseg'] / fastest['smp']:.3f}; median of per-round "
        f"ratios: {statistics.median(pairs):.3f}",
        "dermaseg's head follows the paper (ASPP -> 1x1 classifier); smp adds a 3x3 256->256 "
        "conv + BN + ReLU after the ASPP (as torchvision does).",
    ]
    return rows, notes


def variants(repeats: int) -> list[dict]:
    x = torch.randn(1, 3, 256, 256)
    rows = []
    combos = [(b, a, o) for b in BACKBONES for a in ("deeplabv3", "deeplabv3plus") for o in OPTIONS]
    for backbone, arch, option in tqdm(combos, desc="variants at 256x256"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch, backbone=backbone, **OPTIONS[option])).eval()
        timed(model, x)
        runs = [timed(model, x) for _ in range(repeats)]
        rows.append({"backbone": backbone, "arch": arch, "option": option,
                     "params_M": count(model),
                     "median_wall_s_256": statistics.median(r[0] for r in runs),
                     "min_wall_s_256": min(r[0] for r in runs),
                     "median_cpu_s_256": statistics.median(r[1] for r in runs)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (>= 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--skip-variants", action="store_true", help="only the smp comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    rows, notes = versus_smp(max(args.rounds, 5))
    report("model_vs_smp", "DeepLab-v3 ResNet-50 OS16, CPU forward at 512x512", rows, notes)
    if not args.skip_variants:
        report("model_variants", "Every variant: parameters and CPU forward at 256x256",
               variants(args.repeats),
               [f"batch 1, eval, no_grad, {torch.get_num_threads()} threads; median of "
                f"{args.repeats} runs after 1 warm-up"])


if __name__ == "__main__":
    main()
