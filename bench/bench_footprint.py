"""What a deployed model costs a process: start-up time and peak memory of `dermaseg predict`
and `dermaseg serve` with an ONNX model, which run without importing PyTorch, against the same
commands in a process that imports PyTorch first (what every command did before), and against
the PyTorch checkpoint.

    python bench/bench_footprint.py [--images 8] [--repeats 3]

The model is DeepLab-v3+ ResNet-18 at 256 px with random weights (the network's cost is not
the question); the images are synthetic 1024x768 JPEGs. Each variant runs in a fresh process,
the variants alternate, and the table gives medians. Peak memory is the process's maximum
resident set (VmHWM, written at exit by a sitecustomize); the server's is its resident set
after it answered every image once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import report  # noqa: E402
from helpers.serving import Server  # noqa: E402

SITECUSTOMIZE = """import atexit, os
if os.environ.get("BENCH_IMPORT_TORCH"):
    import torch  # noqa: F401  (the process as it was before ONNX inference left torch out)

def _peak():  # VmHWM, not ru_maxrss: that one keeps the parent's peak across fork + exec
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as handle:
        handle.write(peak)

if os.environ.get("BENCH_PEAK_FILE"):
    atexit.register(_peak)
"""


def make_models(folder: Path) -> tuple[Path, Path]:
    import torch

    from dermaseg.checkpoint import save_checkpoint
    from dermaseg.config import Config
    from dermaseg.export.onnx import export_onnx
    from dermaseg.model_meta import ModelMeta
    from dermaseg.models.factory import build_model

    torch.manual_seed(0)
    config = Config().updated({"model.arch": "deeplabv3plus", "model.backbone": "resnet18",
                               "data.image_size": 256})
    model, meta = build_model(config.model).eval(), ModelMeta.from_config(config)
    save_checkpoint(folder / "model.ckpt", model, meta)
    return folder / "model.ckpt", export_onnx(model, meta, folder / "model.onnx",
                                              exporter="legacy")


def make_images(folder: Path, count: int) -> Path:
    from dermaseg.data.synth import SynthOptions, synth_dataset

    synth_dataset(count, folder, seed=0, progress=False,
                  options=SynthOptions(min_side=768, max_side=1024))
    for mask in folder.glob("*_segmentation.png"):
        mask.unlink()
    return folder


def environment(hooks: Path, import_torch: bool, peak_file: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), *sys.path])}
    env.pop("BENCH_IMPORT_TORCH", None)
    if import_torch:
        env["BENCH_IMPORT_TORCH"] = "1"
    if peak_file:
        env["BENCH_PEAK_FILE"] = str(peak_file)
    return env


def predict_once(model: Path, images: Path, work: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak MB) of one `dermaseg predict` over every image."""
    command = [sys.executable, "-m", "dermaseg", "predict", str(model), str(images), "-o",
               str(work / "out"), "--overwrite", "-q", "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    return seconds, int(Path(env["BENCH_PEAK_FILE"]).read_text()) / 1024


def serve_once(model: Path, images: Path, work: Path, env: dict) -> tuple[float, float]:
    """(seconds until /readyz answers, resident MB after one request per image)."""
    start = time.perf_counter()
    server = Server(model, work / "server.log", env=env).wait_ready()
    ready = time.perf_counter() - start
    try:
        for image in sorted(images.glob("*.jpg")):
            reply = httpx.post(f"{server.url}/v1/segment", timeout=120,
                               files={"file": (image.name, image.read_bytes())})
            reply.raise_for_status()
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
    finally:
        server.stop()
    return ready, rss_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "hooks").mkdir()
        (work / "hooks" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        ckpt, onnx = make_models(work)
        images = make_images(work / "images", args.images)
        variants = {"ONNX, without torch (now)": (onnx, False),
                    "ONNX, torch imported (before)": (onnx, True),
                    "PyTorch checkpoint": (ckpt, True)}
        samples = {name: {"predict": [], "serve": []} for name in variants}
        for _ in range(args.repeats):
            for name, (model, import_torch) in variants.items():
                env = environment(work / "hooks", import_torch, work / "peak")
                samples[name]["predict"].append(predict_once(model, images, work, env))
                env = environment(work / "hooks", import_torch)
                samples[name]["serve"].append(serve_once(model, images, work, env))
    rows = [row(name, found) for name, found in samples.items()]
    reference = rows[1]
    notes = [f"{args.images} synthetic 1024x768 JPEGs; DeepLab-v3+ ResNet-18 at 256 px; medians "
             f"of {args.repeats} fresh processes per variant, alternating.",
             "predict without torch vs with it imported: "
             f"{reference['predict s'] / rows[0]['predict s']:.2f}x faster, "
             f"{reference['predict peak MB'] - rows[0]['predict peak MB']:.0f} MB less; serve: "
             f"ready {reference['serve ready s'] / rows[0]['serve ready s']:.2f}x sooner, "
             f"{reference['serve RSS MB'] - rows[0]['serve RSS MB']:.0f} MB less resident."]
    report("footprint", "Deployment footprint: ONNX without PyTorch", rows, notes)


def row(name: str, found: dict) -> dict:
    def median(key: str, index: int) -> float:
        return round(statistics.median(sample[index] for sample in found[key]), 2)

    return {"variant": name, "predict s": median("predict", 0),
            "predict peak MB": median("predict", 1), "serve ready s": median("serve", 0),
            "serve RSS MB": median("serve", 1)}


if __name__ == "__main__":
    main()
