"""A bounded load test of `dermaseg serve` on loopback: errors, throughput, p50/p99 latency.

Starts `python -m dermaseg serve MODEL` in a subprocess on a free port, waits for /readyz, then
sends --requests POST /v1/segment requests (real images from DERMASEG_REAL, cycled) from
--concurrency client threads, each waiting for its answer before sending the next.

    python bench/bench_serve.py [--model model.onnx] [--requests 500] [--concurrency 8]

Without --model it serves a DeepLab-v3 ResNet-18 at 256 px with random weights, exported to
ONNX (the server's default backend): the load test measures the service, not the network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import report  # noqa: E402
from helpers.serving import Server  # noqa: E402

REAL = Path(os.environ.get("DERMASEG_REAL", HERE.parents[1] / "shared" / "data" / "derm-real"))


def default_model(folder: Path) -> Path:
    import torch

    from dermaseg.config import Config
    from dermaseg.export.onnx import export_onnx
    from dermaseg.model_meta import ModelMeta
    from dermaseg.models.factory import build_model

    torch.manual_seed(0)
    config = Config().updated({"model.backbone": "resnet18", "data.image_size": 256})
    model = build_model(config.model).eval()
    return export_onnx(model, ModelMeta.from_config(config), folder / "r18_256.onnx",
                       exporter="legacy")


def payloads(count: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in REAL.glob("*.jpg") if not p.stem.endswith("_segmentation"))
    if not files:
        raise SystemExit(f"no .jpg images in {REAL}; set DERMASEG_REAL")
    picked = np.random.default_rng(0).choice(len(files), size=min(count, len(files)),
                                             replace=False)
    return [(files[i].name, files[i].read_bytes()) for i in sorted(picked)]


def load(url: str, images, requests: int, concurrency: int):
    """Returns (latencies in s, status counts, transport errors, wall time)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                name, data = images[index % len(images)]
                start = time.perf_counter()
                try:
                    status = client.post(f"{url}/v1/segment", files={"file": (name, data)}
                                         ).status_code
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    return latencies, statuses, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .onnx or .ckpt model (default: see the docstring)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images", type=int, default=32, help="distinct real images to cycle")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dermaseg-bench-serve-") as folder:
        measure(args, Path(folder))


def measure(args: argparse.Namespace, folder: Path) -> None:
    model = Path(args.model) if args.model else default_model(folder)
    images = payloads(args.images)
    server = Server(model, folder / "server.log").wait_ready()
    try:
        latencies, statuses, errors, wall = load(server.url, images, args.requests,
                                                 args.concurrency)
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    ok = statuses.get(200, 0)
    ordered = sorted(latencies)
    rows = [{
        "model": model.name, "requests": args.requests, "concurrency": args.concurrency,
        "ok_200": ok, "errors": args.requests - ok, "transport_errors": len(errors),
        "statuses": str(dict(sorted(statuses.items()))),
        "throughput_rps": ok / wall, "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": 1000 * ordered[-1], "wall_s": wall,
    }]
    sizes = [f"{len(data) / 1e3:.0f} kB" for _, data in images[:3]]
    notes = [
        f"`dermaseg serve` (uvicorn, 1 worker, default limits) on 127.0.0.1; {len(images)} real "
        f"JPEGs from {REAL.name} cycled (e.g. {', '.join(sizes)}), each answered with the full "
        "JSON (mask PNG, contour, measurements).",
        "errors = requests without a 200 answer; latency is client-side, per request.",
        f"model: {'given' if args.model else 'DeepLab-v3 ResNet-18, 256 px, random weights, ONNX'}",
        "server-side: " + "; ".join(line for line in metrics.splitlines()
                                    if line.startswith("dermaseg_requests_total")),
    ]
    report("bench_serve", "Load test: dermaseg serve on loopback", rows, notes)


if __name__ == "__main__":
    main()
