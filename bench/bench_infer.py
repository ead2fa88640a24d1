"""CPU inference: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8 (static QDQ).

DeepLab-v3 ResNet-50 at 512x512, batch 1, median of --repeats runs each, file sizes, and the
Dice agreement of INT8 and fp32 masks (at the original size) on real images that were not used
for calibration (DERMASEG_REAL, default ../shared/data/derm-real). Also measured: other INT8
layouts (QOperator, per-tensor weights) and dynamic quantization, to show which one is fast.

    python bench/bench_infer.py [--checkpoint runs/r50/best.ckpt] [--repeats 10]

Without --checkpoint the network starts from random weights (no ImageNet weights offline here)
and is briefly fitted (--fit-steps Adam steps) on other real images: speed and size do not
depend on the weights, but a random network's masks are all empty, which would make the
agreement trivially perfect. The table says which model was used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from dermaseg.checkpoint import load_model  # noqa: E402
from dermaseg.config import Config  # noqa: E402
from dermaseg.export.int8 import Int8Options, mask_dice, quantize_int8  # noqa: E402
from dermaseg.export.onnx import export_onnx  # noqa: E402
from dermaseg.export.parity import max_probability_difference  # noqa: E402
from dermaseg.infer.onnx_backend import INPUT_NAME  # noqa: E402
from dermaseg.model_meta import ModelMeta  # noqa: E402
from dermaseg.models.factory import build_model  # noqa: E402

FIT_SIZE = 256
REAL = Path(os.environ.get("DERMASEG_REAL", Path(__file__).resolve().parents[2] / "shared"
                           / "data" / "derm-real"))


def real_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (image, mask) pairs of the real set, a seeded random sample."""
    from dermaseg.fileio import read_rgb
    from dermaseg.infer.inputs import list_inputs

    files, _ = list_inputs([str(REAL)])
    if not files:
        raise SystemExit(f"no images under {REAL}; set DERMASEG_REAL")
    picked = np.random.default_rng(0).choice(len(files), size=min(count, len(files)),
                                             replace=False)
    pairs = []
    for i in picked:
        mask = files[i].with_name(files[i].stem + "_segmentation.png")
        pairs.append((read_rgb(files[i]), read_rgb(mask)[..., 0]))
    return pairs


def the_model(checkpoint: str | None, size: int, fit_steps: int, train_pairs: list):
    if checkpoint:
        model, meta = load_model(checkpoint)
        return model, meta, f"trained checkpoint {checkpoint}"
    torch.manual_seed(0)
    config = Config().updated({"model.arch": "deeplabv3", "model.backbone": "resnet50",
                               "data.image_size": size})
    model, meta = build_model(config.model), ModelMeta.from_config(config)
    if fit_steps <= 0:
        return model.eval(), meta, "random weights"
    quick_fit(model, meta, train_pairs, fit_steps)
    return model.eval(), meta, (f"random init briefly fitted ({fit_steps} Adam steps, batch 2, "
                                f"{FIT_SIZE} px, on {len(train_pairs)} other real images)")


def quick_fit(model, meta: ModelMeta, pairs: list, steps: int) -> None:
    """A few Adam steps on letterboxed real pairs, so that the masks are lesions rather than
    the all-empty output of a random network (which would make any agreement trivial)."""
    from PIL import Image
    from tqdm import tqdm

    from dermaseg.geometry import letterbox_image
    from dermaseg.preprocessing import Preprocessing

    small = dataclasses.replace(meta, image_size=FIT_SIZE)  # a quarter of the cost per step
    prepare = Preprocessing.from_meta(small)
    images = torch.from_numpy(np.stack([prepare(image)[0] for image, _ in pairs]))
    masks = torch.from_numpy(np.stack([
        letterbox_image(Image.fromarray(mask), FIT_SIZE, is_mask=True)[0] > 127
        for _, mask in pairs]).astype(np.float32))[:, None]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    order = np.random.default_rng(0)
    for _ in tqdm(range(steps), desc="fit", unit="step"):
        index = torch.from_numpy(order.choice(len(pairs), size=2, replace=False))
        logits = model(images[index])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed round-robin (one run of each per round) so that
    a busy machine slows them all alike; two warm-up rounds first."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats + 2):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_index >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def runner(path: Path, side: int):
    from dermaseg.infer.onnx_backend import onnx_session

    session = onnx_session(path, spin=False)
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    return lambda: session.run(None, {INPUT_NAME: x})


def agreement(fp32_path: Path, int8_path: Path, images: list[np.ndarray]):
    """(mean Dice, min Dice, mean lesion fraction of the fp32 masks)."""
    from dermaseg.infer.predictor import Predictor

    fp32, int8 = Predictor.load(fp32_path), Predictor.load(int8_path)
    masks = [(fp32.predict(image), int8.predict(image)) for image in images]
    dices = [mask_dice(a, b) for a, b in masks]
    return float(np.mean(dices)), float(np.min(dices)), float(np.mean([a.mean() for a, _ in masks]))


VARIANTS = {
    "qdq": ("ONNX Runtime INT8 static QDQ per-channel (default)", Int8Options()),
    "qoperator": ("ONNX Runtime INT8 static QOperator", Int8Options(quant_format="qoperator")),
    "qdq-per-tensor": ("ONNX Runtime INT8 static QDQ per-tensor", Int8Options(per_channel=False)),
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained DeepLab-v3 ResNet-50 checkpoint")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calib", type=int, default=16, help="real images for calibration")
    parser.add_argument("--compare", type=int, default=24, help="other real images for Dice")
    parser.add_argument("--fit-steps", type=int, default=24,
                        help="without --checkpoint: Adam steps on real images (0: random)")
    parser.add_argument("--fit-images", type=int, default=40, help="real images to fit on")
    parser.add_argument("--variants", default="qdq,qoperator,qdq-per-tensor,dynamic")
    return parser.parse_args()


def quantize_variants(fp32_path: Path, folder: Path, calib, meta, keys: list[str]
                      ) -> tuple[dict[str, Path], dict[str, float]]:
    """Each static INT8 variant in `keys`: its path and the seconds quantization took."""
    paths, seconds = {}, {}
    for key in keys:
        start = time.perf_counter()
        paths[key] = quantize_int8(fp32_path, folder / f"{key}.onnx", calib, meta,
                                   VARIANTS[key][1])
        seconds[key] = time.perf_counter() - start
    return paths, seconds


def int8_rows(fp32_path: Path, paths: dict[str, Path], medians: dict[str, float],
              quantize_s: dict[str, float], compare) -> list[dict]:
    base, fp32_mb = medians["eager"], fp32_path.stat().st_size / 1e6
    rows = []
    for key, path in paths.items():
        dice_mean, dice_min, fraction = agreement(fp32_path, path, compare)
        size = path.stat().st_size / 1e6
        rows.append({"runtime": VARIANTS[key][0], "median_ms": 1000 * medians[key],
                     "size_mb": size, "speedup_vs_eager": base / medians[key],
                     "size_vs_fp32": size / fp32_mb, "dice_vs_fp32_mean": dice_mean,
                     "dice_vs_fp32_min": dice_min, "fp32_lesion_fraction": fraction,
                     "quantize_s": quantize_s[key]})
    return rows


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory(prefix="dermaseg-bench-") as folder:
        measure(args, Path(folder))


def measure(args: argparse.Namespace, folder: Path) -> None:
    pairs = real_pairs(args.calib + args.compare + args.fit_images)
    images = [image for image, _ in pairs]
    calib, compare = images[: args.calib], images[args.calib: args.calib + args.compare]
    model, meta, weights = the_model(args.checkpoint, args.size, args.fit_steps,
                                     pairs[args.calib + args.compare:])
    side = meta.image_size
    x = torch.randn(1, 3, side, side)
    fp32_path = export_onnx(model, meta, folder / "fp32.onnx")
    diff = max_probability_difference(model, fp32_path, [x.numpy()])
    keys = [k for k in args.variants.split(",") if k in VARIANTS]
    paths, quantize_s = quantize_variants(fp32_path, folder, calib, meta, keys)

    def eager() -> None:
        with torch.inference_mode():
            model(x)

    # eager alone first: beside ONNX Runtime's thread pools it measured 3-8x slower here
    medians = interleaved_medians({"eager": eager}, args.repeats)
    fns = {"fp32": runner(fp32_path, side),
           **{key: runner(path, side) for key, path in paths.items()}}
    medians.update(interleaved_medians(fns, args.repeats))
    ckpt_mb = sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1e6
    fp32_mb = fp32_path.stat().st_size / 1e6
    base = medians["eager"]
    rows = [{"runtime": "PyTorch eager fp32", "median_ms": 1000 * base, "size_mb": ckpt_mb,
             "speedup_vs_eager": 1.0},
            {"runtime": "ONNX Runtime fp32", "median_ms": 1000 * medians["fp32"],
             "size_mb": fp32_mb, "speedup_vs_eager": base / medians["fp32"],
             "max_prob_diff_vs_torch": diff},
            *int8_rows(fp32_path, paths, medians, quantize_s, compare)]
    if "dynamic" in args.variants.split(","):
        rows.append(dynamic_row(fp32_path, folder, side, base, fp32_mb))
    notes = [
        f"DeepLab-v3 ResNet-50 (output stride 16) at {side}x{side}, batch 1, {weights}; "
        f"median of {args.repeats} runs after 2 warm-up runs (eager alone, the ONNX Runtime "
        f"models round-robin); torch threads "
        f"{torch.get_num_threads()}, ONNX Runtime default threads.",
        f"INT8 calibrated on {len(calib)} real images ({REAL.name}); Dice agreement of the "
        f"masks on {len(compare)} other real images at their original size.",
        "Goal: INT8 >= 3x faster than PyTorch eager and <= 30 % of the fp32 size, "
        "Dice agreement >= 0.98.",
    ]
    report("bench_infer", "CPU inference: PyTorch vs ONNX Runtime fp32 vs INT8", rows, notes)


def dynamic_row(fp32_path: Path, folder: Path, side: int, eager: float, fp32_mb: float) -> dict:
    """Dynamic INT8 (weights only, activations quantized at run time): ConvInteger kernels."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = folder / "dynamic.onnx"
    quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QUInt8)
    latency = interleaved_medians({"dynamic": runner(path, side)}, 3)["dynamic"]
    return {"runtime": "ONNX Runtime INT8 dynamic (not used: slow)", "median_ms": 1000 * latency,
            "size_mb": path.stat().st_size / 1e6, "speedup_vs_eager": eager / latency,
            "size_vs_fp32": path.stat().st_size / 1e6 / fp32_mb}


if __name__ == "__main__":
    main()
