"""Fingerprint everything a set of models writes for a folder of images, to prove that a
refactoring changed no output.

For each model (a checkpoint, its ONNX and INT8 exports ...), through the real commands:
`dermaseg predict` with --save-prob --measure (plain, then with TTA and post-processing), and
`dermaseg serve` on loopback answering POST /v1/segment (default options) for the first
--service-count images. It records the SHA-256
of every mask, probability map, the measurements and each service JSON (its fields of
version 0.1 without the timing: COMPARED_FIELDS), so two runs compare file by file:

    PYTHONPATH=/tmp/old/src python bench/same_outputs.py MODEL... --images DIR -o before.json
    python bench/same_outputs.py MODEL... --images DIR -o after.json --compare before.json

Exit 1 when --compare finds an output changed or missing (each one listed); outputs that are
new since the earlier run (files a later version adds) are counted apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

VARIANTS = {"plain": [], "tta-post": ["--tta", "--keep-largest", "--fill-holes",
                                      "--min-area", "50"]}
# the service JSON's fields in version 0.1, without its timing: fields added since are left
# out, so that an addition is not taken for a change
COMPARED_FIELDS = ("filename", "width", "height", "area_fraction", "bbox", "contour",
                   "measurements", "mask_png_base64", "model")
MODEL_FIELDS = ("name", "version", "file", "backend", "image_size", "threshold")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def folder_digests(folder: Path) -> dict[str, str]:
    """SHA-256 (16 hex) of every file under `folder` but predict.json, by relative path."""
    return {str(path.relative_to(folder)): digest(path.read_bytes())
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "predict.json"}


def run_predict(model: str, images: Path, out: Path, extra: list[str]) -> dict[str, str]:
    command = [sys.executable, "-m", "dermaseg", "predict", model, str(images), "-o", str(out),
               "--save-prob", "--measure", "-q", "--device", "cpu", *extra]
    subprocess.run(command, check=True)
    return folder_digests(out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def service_digests(model: str, images: list[Path]) -> dict[str, str]:
    """One POST /v1/segment per image on a real server; the JSON without timing, hashed."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "dermaseg", "serve", model, "--host",
                                "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        result = {}
        with httpx.Client(timeout=120) as client:
            for path in images:
                response = client.post(f"{base}/v1/segment",
                                       files={"file": (path.name, path.read_bytes())})
                body = response.json()
                kept = {name: body.get(name) for name in COMPARED_FIELDS}
                if isinstance(kept["model"], dict):
                    kept["model"] = {name: kept["model"].get(name) for name in MODEL_FIELDS}
                text = json.dumps({"status": response.status_code, **kept}, sort_keys=True)
                result[path.name] = digest(text.encode())
        return result
    finally:
        process.terminate()
        process.wait(timeout=30)


def fingerprint(models: list[str], images: Path, service_count: int) -> dict:
    listed = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                    and "_segmentation" not in p.stem)
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="same-outputs-") as scratch:
        for index, model in enumerate(models):
            for variant, extra in VARIANTS.items():
                key = f"{Path(model).name}/{variant}"
                out = Path(scratch) / f"{index}-{variant}"
                print(f"predict {key}", flush=True)
                result[f"predict/{key}"] = run_predict(model, images, out, extra)
            print(f"serve {Path(model).name}", flush=True)
            result[f"serve/{Path(model).name}"] = service_digests(model, listed[:service_count])
    return result


def differences(before: dict, after: dict) -> tuple[list[str], list[str]]:
    """(outputs changed or missing, outputs new since `before`): an output a later version
    adds (a new file beside the masks) is listed, not counted as a change."""
    changed, added = [], []
    for group in sorted(set(before) | set(after)):
        old, new = before.get(group, {}), after.get(group, {})
        for name in sorted(set(old) | set(new)):
            if name not in old:
                added.append(f"{group}/{name}")
            elif old[name] != new.get(name):
                changed.append(f"{group}/{name}: {old[name]} -> {new.get(name)}")
    return changed, added


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--service-count", type=int, default=40,
                        help="images sent to the service per model")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    result = fingerprint(args.models, args.images, args.service_count)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    files = sum(len(group) for group in result.values())
    print(f"{files} outputs fingerprinted -> {args.out}")
    if args.compare is None:
        return 0
    found, added = differences(json.loads(args.compare.read_text()), result)
    for line in found[:50]:
        print("DIFFERENT", line)
    names = sorted({name.rsplit("/", 1)[-1] for name in added})
    print(f"{len(found)} difference(s) against {args.compare}; {len(added)} new output(s) "
          f"not compared ({', '.join(names[:5]) or 'none'})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
