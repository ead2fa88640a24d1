"""A bounded soak of `dermaseg serve`: mixed good and bad requests for --seconds, the server's
resident memory (VmRSS from /proc/PID/status) sampled every --every seconds.

    python bench/bench_soak.py [--seconds 300] [--concurrency 4] [--every 5] [--model M.onnx]

Requests cycle through good synthetic images (PNG and JPEG, 60-400 px), and bad ones: text
named .jpg, truncated JPEG, a 20000x20000 PNG header (decompression bomb), an empty upload,
random bytes, a broken multipart body. Without --model it serves a DeepLab-v3 ResNet-18 at
64 px with random weights (ONNX). Writes bench/results/bench_soak.{json,md} and
bench/results/bench_soak_memory.png. "Flat" means the RSS growth over the second half of the
run is small against the RSS itself: the server holds no per-request memory.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import RESULTS, report  # noqa: E402
from helpers.serving import Server  # noqa: E402


def tiny_model(folder: Path) -> Path:
    import torch

    from dermaseg.config import Config
    from dermaseg.export.onnx import export_onnx
    from dermaseg.model_meta import ModelMeta
    from dermaseg.models.factory import build_model

    torch.manual_seed(0)
    config = Config().updated({"model.backbone": "resnet18", "model.aspp_channels": 16,
                               "data.image_size": 64})
    model = build_model(config.model).eval()
    return export_onnx(model, ModelMeta.from_config(config), folder / "r18_64.onnx",
                       exporter="legacy")


def request_mix() -> list[tuple[str, dict]]:
    """(label, httpx.post keyword arguments) of every request kind, good ones first."""
    from PIL import Image

    from dermaseg.data.synth import SynthOptions, synth_pair
    from helpers.badinputs import png_bomb

    rng = np.random.default_rng(0)
    mix = []
    for index, (width, height) in enumerate([(60, 80), (200, 150), (400, 300), (123, 321)]):
        image, _ = synth_pair(rng, width, height, SynthOptions())
        buffer = io.BytesIO()
        fmt = "PNG" if index % 2 else "JPEG"
        Image.fromarray(image).save(buffer, format=fmt)
        mix.append(("good", {"files": {"file": (f"g{index}.{fmt.lower()}", buffer.getvalue())}}))
    jpeg = mix[0][1]["files"]["file"][1]
    bad = {"text": b"not an image\n" * 30, "truncated": jpeg[: len(jpeg) // 2],
           "bomb": png_bomb(20000, 20000), "empty": b"", "random": rng.bytes(4000)}
    mix += [(f"bad:{k}", {"files": {"file": (f"{k}.jpg", v)}}) for k, v in bad.items()]
    mix.append(("bad:multipart", {"content": b"--x\r\ngarbage",
                                  "headers": {"content-type": "multipart/form-data; boundary=x"}}))
    return mix


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plot(samples: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t for t, _ in samples], [m for _, m in samples], marker=".")
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(0, max(m for _, m in samples) * 1.2)
    ax.set_title("dermaseg serve: resident memory under mixed good/bad requests")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def soak(server: Server, seconds: float, concurrency: int, every: float):
    mix = request_mix()
    pid = server.process.pid
    statuses: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            index = worker
            while time.monotonic() < stop:
                label, kwargs = mix[index % len(mix)]
                index += 1
                start = time.perf_counter()
                code = http.post(f"{server.url}/v1/segment", **kwargs).status_code
                with lock:
                    statuses[(label, code)] += 1
                    latencies.append(time.perf_counter() - start)

    samples = [(0.0, rss_kib(pid) / 1024)]
    begin = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(client, w) for w in range(concurrency)]
        while time.monotonic() < stop:
            time.sleep(min(every, max(0.0, stop - time.monotonic())))
            samples.append((round(time.monotonic() - begin, 1), rss_kib(pid) / 1024))
        for future in futures:
            future.result()
    return samples, statuses, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--every", type=float, default=5)
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or tiny_model(Path(folder))
        server = Server(model, Path(folder) / "server.log", "--max-concurrency",
                        str(args.concurrency))
        try:
            server.wait_ready()
            samples, statuses, latencies = soak(server, args.seconds, args.concurrency,
                                                args.every)
            alive = server.process.poll() is None
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(samples, RESULTS / "bench_soak_memory.png")
    half = [m for t, m in samples if t >= args.seconds / 2]
    total = sum(statuses.values())
    rows = [{"kind": label, "status": code, "requests": n}
            for (label, code), n in sorted(statuses.items())]
    rows.append({"kind": "all", "status": "5xx",
                 "requests": sum(n for (_, c), n in statuses.items() if c >= 500)})
    notes = [
        f"{args.seconds:g} s, {args.concurrency} clients, {total} requests "
        f"({total / args.seconds:.1f}/s), p50 {1000 * np.median(latencies):.0f} ms, "
        f"p99 {1000 * np.percentile(latencies, 99):.0f} ms; server alive at the end: {alive}",
        f"RSS MiB: start {samples[0][1]:.1f}, after warm-up {samples[1][1]:.1f}, "
        f"end {samples[-1][1]:.1f}, max {max(m for _, m in samples):.1f}; second half "
        f"min {min(half):.1f} max {max(half):.1f} (growth {max(half) - min(half):.1f})",
        "memory curve: bench_soak_memory.png; samples (s, MiB): "
        + ", ".join(f"({t:g}, {m:.1f})" for t, m in samples),
    ]
    report("bench_soak", "Soak: mixed good/bad requests, server memory over time", rows, notes)


if __name__ == "__main__":
    main()
