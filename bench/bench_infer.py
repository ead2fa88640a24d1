"""CPU inference: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8 (static QDQ).

DeepLab-v3 ResNet-50 at 512x512, batch 1, median of --repeats runs each, file sizes, and the
Dice agreement of INT8 and fp32 masks (at the original size) on real images that were not used
for calibration (DERMASEG_REAL, default ../shared/data/derm-real). Also measured: other INT8
layouts (QOperator, per-tensor weights) and dynamic quantization, to show which one is fast.

    python bench/bench_infer.py [--checkpoint runs/r50/best.ckpt] [--repeats 10]

Without --checkpoint the network has random weights (no ImageNet weights offline here): speed
and size do not depend on the weights, but the mask agreement of a random network is a weaker
test than that of a trained one, so the table says which was used.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, report  # noqa: E402
from dermaseg.checkpoint import ModelMeta, load_model  # noqa: E402
from dermaseg.config import Config  # noqa: E402
from dermaseg.export import INPUT_NAME, export_onnx, max_probability_difference  # noqa: E402
from dermaseg.models.factory import build_model  # noqa: E402
from dermaseg.quantize import Int8Options, mask_dice, quantize_int8  # noqa: E402

REAL = Path(os.environ.get("DERMASEG_REAL", Path(__file__).resolve().parents[2] / "shared"
                           / "data" / "derm-real"))


def real_images(count: int) -> list[np.ndarray]:
    from dermaseg.fileio import read_rgb
    from dermaseg.infer.batch import list_inputs

    files, _ = list_inputs([str(REAL)])
    if not files:
        raise SystemExit(f"no images under {REAL}; set DERMASEG_REAL")
    picked = np.random.default_rng(0).choice(len(files), size=min(count, len(files)),
                                             replace=False)
    return [read_rgb(files[i]) for i in sorted(picked)]


def the_model(checkpoint: str | None, size: int):
    if checkpoint:
        model, meta = load_model(checkpoint)
        return model, meta, f"trained checkpoint {checkpoint}"
    torch.manual_seed(0)
    config = Config()
    config.model.arch, config.model.backbone, config.data.image_size = "deeplabv3", "resnet50", size
    return build_model(config.model).eval(), ModelMeta.from_config(config), "random weights"


def session_latency(path: Path, side: int, repeats: int) -> float:
    from dermaseg.export import onnx_session

    session = onnx_session(path)
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    return median_time(lambda: session.run(None, {INPUT_NAME: x}), repeats=repeats)


def agreement(fp32_path: Path, int8_path: Path, images: list[np.ndarray]) -> tuple[float, float]:
    from dermaseg.infer.predictor import Predictor

    fp32, int8 = Predictor.load(fp32_path), Predictor.load(int8_path)
    dices = [mask_dice(fp32.predict(image), int8.predict(image)) for image in images]
    return float(np.mean(dices)), float(np.min(dices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained DeepLab-v3 ResNet-50 checkpoint")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calib", type=int, default=16, help="real images for calibration")
    parser.add_argument("--compare", type=int, default=24, help="other real images for Dice")
    parser.add_argument("--variants", default="qdq,qoperator,qdq-per-tensor,dynamic")
    args = parser.parse_args()

    model, meta, weights = the_model(args.checkpoint, args.size)
    side = meta.image_size
    images = real_images(args.calib + args.compare)
    calib, compare = images[: args.calib], images[args.calib:]
    folder = Path(tempfile.mkdtemp(prefix="dermaseg-bench-"))
    ckpt_mb = sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1e6
    x = torch.randn(1, 3, side, side)
    with torch.inference_mode():
        eager = median_time(lambda: model(x), repeats=args.repeats)
    rows = [{"runtime": "PyTorch eager fp32", "median_ms": 1000 * eager, "size_mb": ckpt_mb,
             "speedup_vs_eager": 1.0}]
    fp32_path = export_onnx(model, meta, folder / "fp32.onnx")
    diff = max_probability_difference(model, fp32_path, [x.numpy()])
    fp32 = session_latency(fp32_path, side, args.repeats)
    fp32_mb = fp32_path.stat().st_size / 1e6
    rows.append({"runtime": "ONNX Runtime fp32", "median_ms": 1000 * fp32, "size_mb": fp32_mb,
                 "speedup_vs_eager": eager / fp32, "max_prob_diff_vs_torch": diff})
    variants = {
        "qdq": ("ONNX Runtime INT8 static QDQ per-channel (default)", Int8Options()),
        "qoperator": ("ONNX Runtime INT8 static QOperator", Int8Options(quant_format="qoperator")),
        "qdq-per-tensor": ("ONNX Runtime INT8 static QDQ per-tensor",
                           Int8Options(per_channel=False)),
    }
    for key in args.variants.split(","):
        if key == "dynamic":
            rows.append(dynamic_row(fp32_path, folder, side, eager, fp32_mb))
            continue
        label, options = variants[key]
        start = time.perf_counter()
        path = quantize_int8(fp32_path, folder / f"{key}.onnx", calib, meta, options)
        took = time.perf_counter() - start
        latency = session_latency(path, side, args.repeats)
        dice_mean, dice_min = agreement(fp32_path, path, compare)
        rows.append({"runtime": label, "median_ms": 1000 * latency,
                     "size_mb": path.stat().st_size / 1e6, "speedup_vs_eager": eager / latency,
                     "size_vs_fp32": path.stat().st_size / 1e6 / fp32_mb,
                     "dice_vs_fp32_mean": dice_mean, "dice_vs_fp32_min": dice_min,
                     "quantize_s": took})
    notes = [
        f"DeepLab-v3 ResNet-50 (output stride 16) at {side}x{side}, batch 1, {weights}; "
        f"median of {args.repeats} runs after 2 warm-up runs; torch threads "
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
    latency = session_latency(path, side, 3)
    return {"runtime": "ONNX Runtime INT8 dynamic (not used: slow)", "median_ms": 1000 * latency,
            "size_mb": path.stat().st_size / 1e6, "speedup_vs_eager": eager / latency,
            "size_vs_fp32": path.stat().st_size / 1e6 / fp32_mb}


if __name__ == "__main__":
    main()
