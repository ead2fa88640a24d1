"""Cost of the augmentation steps for other clinics' dermoscopes: images per second of the
batched augmentation (`BatchAugment`, draw + apply, as a loader worker runs it: 1 torch thread)
with cpu_small's steps, with cpu_small_robust's (scale, hue, saturation, gamma, blur, noise,
vignette, hair on), and with each new step alone on top of cpu_small's (drawn for every
image), at 192 px, batch 8.

    python bench/bench_augment_cost.py            # -> bench/results/augment_cost.{md,json}

All in one process, the cases interleaved round by round (the machine's load hits them alike);
each figure is the median over the rounds of one pass over the same seeds (different batches
draw different samples for the steps with a probability). The ratio to cpu_small is what the
table is for: absolute rates move with the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from common import report
from dermaseg.config import AugmentConfig
from dermaseg.config_io import load_config
from dermaseg.data.augment import BatchAugment


def cases() -> dict[str, AugmentConfig]:
    small = load_config("cpu_small").data.augment
    robust = load_config("cpu_small_robust").data.augment
    alone = {"scale": {"scale": robust.scale}, "hue + saturation": {"hue": robust.hue,
             "saturation": robust.saturation}, "gamma": {"gamma": robust.gamma},
             "blur (p=1)": {"blur_p": 1.0}, "noise": {"noise": robust.noise},
             "vignette (p=1)": {"vignette_p": 1.0}, "hair (p=1)": {"hair_p": 1.0}}
    return {"cpu_small": small, "cpu_small_robust": robust,
            **{f"cpu_small + {name}": small.updated(**fields) for name, fields in alone.items()}}


def one_pass(augment: BatchAugment, images: torch.Tensor, masks: torch.Tensor,
             batches: int, branchless: bool) -> float:
    """Seconds to draw and apply `batches` batches of seeds 0, 1, 2 ..."""
    n = len(images)
    start = time.perf_counter()
    for b in range(batches):
        params = augment.draw(range(b * n, (b + 1) * n))
        augment.apply(images, masks, params, branchless=branchless)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="batches per pass")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a loader worker's
    generator = torch.Generator().manual_seed(0)
    size, n = args.size, args.batch
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[..., size // 4: 3 * size // 4, size // 3: 3 * size // 4] = 1
    runs = {(name, branchless): (BatchAugment(config, size, size), branchless)
            for name, config in cases().items() for branchless in (False, True)
            if not branchless or name in ("cpu_small", "cpu_small_robust")}
    times: dict[tuple, list[float]] = {key: [] for key in runs}
    for augment, branchless in runs.values():  # warm-up
        one_pass(augment, images, masks, 2, branchless)
    for _ in range(args.rounds):
        for key, (augment, branchless) in runs.items():
            times[key].append(one_pass(augment, images, masks, args.batches, branchless))
    rates = {key: n * args.batches / statistics.median(values) for key, values in times.items()}
    rows = []
    for (name, branchless), rate in rates.items():
        mode = "every image + where (as on a GPU)" if branchless else "drawn images only (CPU)"
        rows.append({"augmentation": name, "mode": mode, "images/s": round(rate, 1),
                     "ms/batch": round(1000 * n / rate, 2),
                     "x cpu_small": round(rate / rates[("cpu_small", branchless)], 2)})
    report("augment_cost", f"Augmentation cost: BatchAugment draw + apply, batch {n} @ {size} px, "
           "1 torch thread", rows,
           [f"command: `python bench/bench_augment_cost.py --size {size} --batch {n} "
            f"--batches {args.batches} --rounds {args.rounds}`; medians over {args.rounds} "
            "interleaved rounds, one process",
            "x cpu_small: images/s relative to cpu_small's steps in the same mode (< 1: slower)",
            "'+ X (p=1)': the step drawn for every image; in cpu_small_robust it is drawn for "
            "a fraction (blur 0.2, vignette 0.2, hair 0.1)"])


if __name__ == "__main__":
    main(sys.argv[1:])
