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

from common import machine, median_time, report
from dermaseg.config import ModelConfig
from dermaseg.models import BACKBONES, build_model

OPTIONS = {"plain": {}, "attention": {"attention": "scse"}, "edge": {"edge_head": True}}


def count(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def timed(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start


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
    times: dict[str, list[float]] = {"dermaseg": [], "smp": []}
    for i in tqdm(range(rounds), desc="512x512 rounds"):
        order = [("dermaseg", ours), ("smp", theirs)]
        for name, model in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(model, x))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {"model": "dermaseg DeepLab-v3 R50 OS16", "params_M": count(ours),
         "median_s_512": med["dermaseg"], "min_s_512": min(times["dermaseg"])},
        {"model": "smp DeepLabV3 R50 OS16", "params_M": count(theirs),
         "median_s_512": med["smp"], "min_s_512": min(times["smp"])},
    ]
    ratio = med["dermaseg"] / med["smp"]
    pairs = [a / b for a, b in zip(times["dermaseg"], times["smp"], strict=True)]
    notes = [
        f"ratio dermaseg/smp (median of {rounds} alternating rounds, batch 1, eval, no_grad, "
        f"{torch.get_num_threads()} threads): {ratio:.3f} (goal <= 1.05)",
        f"ratio of minima: {min(times['dermaseg']) / min(times['smp']):.3f}; median of "
        f"per-round ratios: {statistics.median(pairs):.3f}",
        "dermaseg's head follows the paper (ASPP -> 1x1 classifier); smp adds a 3x3 256->256 "
        "conv + BN + ReLU after the ASPP (as torchvision does).",
    ]
    return rows, notes


def variants() -> list[dict]:
    x = torch.randn(1, 3, 256, 256)
    rows = []
    combos = [(b, a, o) for b in BACKBONES for a in ("deeplabv3", "deeplabv3plus") for o in OPTIONS]
    for backbone, arch, option in tqdm(combos, desc="variants at 256x256"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch, backbone=backbone, **OPTIONS[option])).eval()
        with torch.no_grad():
            seconds = median_time(lambda m=model: m(x), repeats=3, warmup=1)
        rows.append({"backbone": backbone, "arch": arch, "option": option,
                     "params_M": count(model), "median_s_256": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (>= 5)")
    parser.add_argument("--skip-variants", action="store_true", help="only the smp comparison")
    args = parser.parse_args()
    print(machine())
    rows, notes = versus_smp(max(args.rounds, 5))
    report("model_vs_smp", "DeepLab-v3 ResNet-50 OS16, CPU forward at 512x512", rows, notes)
    if not args.skip_variants:
        report("model_variants", "Every variant: parameters and CPU forward at 256x256",
               variants(), ["batch 1, eval, no_grad; median of 3 after 1 warm-up"])


if __name__ == "__main__":
    main()
