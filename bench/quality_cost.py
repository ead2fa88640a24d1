"""What the quality estimate costs per image, against the prediction it comes with.

    python bench/quality_cost.py MODEL --images ../shared/data/derm-real -n 40

On the same images, in one process: decoding (as `predict` decodes), the network and the
mask at the original size (`segment`'s work without the estimate), the estimate
(`dermaseg.quality.assess` on the network's map), the service's uncertain band, and the
slower estimate with views (the four flips of `--tta`). Writes bench/results/quality_cost.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dermaseg.fileio import read_rgb_reduced
from dermaseg.geometry import restore_probability
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.segment import Decoded, SegmentOptions, estimate_quality, segment
from dermaseg.infer.tta import TTAConfig

RESULTS = Path(__file__).parent / "results"


def _timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def measure(predictor: Predictor, files: list[Path]) -> dict[str, float]:
    """Seconds per image of each step (the mean over `files`, one image per batch)."""
    totals = dict.fromkeys(("decode", "network_and_mask", "estimate", "uncertain_band",
                            "network_and_mask_4_flips", "estimate_4_flips"), 0.0)
    views = predictor.with_tta(TTAConfig())
    for path in files:
        (image, original), seconds = _timed(read_rgb_reduced, path, predictor.meta.image_size)
        totals["decode"] += seconds
        for name, model in (("", predictor), ("_4_flips", views)):
            start = time.perf_counter()
            (output,) = model.predict_letterboxed([image], [original])
            model.to_mask(restore_probability(output.probability, output.box))
            totals[f"network_and_mask{name}"] += time.perf_counter() - start
            totals[f"estimate{name}"] += _timed(estimate_quality, model, output)[1]
        decoded = Decoded(image, original, lambda image=image: image)
        (result,) = segment(predictor, [decoded], SegmentOptions())
        totals["uncertain_band"] += _timed(lambda r=result: r.uncertain_band)[1]
    return {name: value / len(files) for name, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("-n", type=int, default=40)
    args = parser.parse_args()
    files = sorted(p for p in args.images.iterdir()
                   if p.suffix.lower() == ".jpg")[: args.n]
    predictor = Predictor.load(args.model, batch_size=1)
    measure(predictor, files[:2])  # warm-up
    seconds = measure(predictor, files)
    plain = seconds["decode"] + seconds["network_and_mask"]
    rows = {
        "prediction (decode, network, mask)": plain,
        "+ the estimate (default)": plain + seconds["estimate"],
        "+ the estimate and the service's uncertain band": plain + seconds["estimate"]
        + seconds["uncertain_band"],
        "the estimate with views (--tta: 4 flips)": seconds["decode"]
        + seconds["network_and_mask_4_flips"] + seconds["estimate_4_flips"],
    }
    lines = [f"# Quality estimate: cost per image ({len(files)} images of {args.images.name}, "
             f"model {Path(args.model).name} at {predictor.meta.image_size} px, batch 1, CPU)",
             "", f"`python bench/quality_cost.py {args.model} --images {args.images} -n {args.n}`",
             "", "| what | ms per image | x prediction |", "|---|---:|---:|"]
    lines += [f"| {name} | {1000 * value:.1f} | {value / plain:.3f} |"
              for name, value in rows.items()]
    lines += ["", "Steps: " + ", ".join(f"{name} {1000 * value:.2f} ms"
                                        for name, value in seconds.items())]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality_cost.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "quality_cost.json").write_text(json.dumps(
        {"images": len(files), "seconds_per_image": seconds, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
