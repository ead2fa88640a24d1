"""`dermaseg doctor`: what this machine offers dermaseg (versions, GPU, disk, memory, extras)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from pathlib import Path

import typer

from dermaseg import __version__
from dermaseg.errors import UsageError

PACKAGES = ("torch", "torchvision", "timm", "lightning", "torchmetrics", "onnx", "onnxruntime",
            "fastapi", "uvicorn", "numpy", "pillow")
EXTRAS = {  # extra: (package, what for)
    "crf": ("pydensecrf2", "--crf"),
    "tflite": ("litert-torch", "TFLite export; needs PyTorch"),
    "dev": ("isic-challenge-scoring", "the tests' official scorer"),
    "bench": ("segmentation-models-pytorch", "the benchmarks' peer model"),
}
LITERT = "ai-edge-litert"  # runs .tflite models, with or without PyTorch


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _accelerators() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["unknown: PyTorch is not installed (this environment runs .onnx models only)"]
    found = [f"CUDA {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("Apple MPS")
    return found or ["none (training and inference run on the CPU)"]


def _onnx_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return ["none: onnxruntime is not installed"]
    providers = onnxruntime.get_available_providers()
    return [name.removesuffix("ExecutionProvider") for name in providers]


def _memory_gib() -> str:
    """Available memory (MemAvailable: free plus reclaimable cache) of the total."""
    from dermaseg.train.machine import memory_bytes

    memory = memory_bytes()
    if memory is None:
        return "unknown"
    available, total = memory
    return f"{available / 2**30:.1f} GiB available of {total / 2**30:.1f}"


def _disk(path: Path) -> str:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return f"unknown ({exc.strerror or exc})"
    return f"{usage.free / 2**30:.1f} GiB free"


def doctor(
    path: Path = typer.Option(Path("."), "--path", help="Folder whose disk space to report."),
) -> None:
    """Print versions, GPUs, free disk and memory, and which optional extras are installed."""
    if not path.is_dir():
        raise UsageError(f"--path {path}: no such folder")
    typer.echo(f"dermaseg {__version__}  python {platform.python_version()}  {platform.platform()}")
    for package in PACKAGES:
        typer.echo(f"  {package:<14} {_version(package)}")
    typer.echo(f"accelerators:  {'; '.join(_accelerators())}")
    typer.echo(f"onnxruntime:   {', '.join(_onnx_providers())}")
    typer.echo(f"CPU cores:     {os.cpu_count()}")
    typer.echo(f"memory:        {_memory_gib()}")
    typer.echo(f"disk ({path}): {_disk(path)}")
    for extra, (package, purpose) in EXTRAS.items():
        hint = "installed" if _installed(package) else f"missing: pip install 'dermaseg[{extra}]'"
        typer.echo(f"extra {extra:<8} ({package}, {purpose}): {hint}")
    hint = "installed" if _installed(LITERT) else f"missing: pip install {LITERT}"
    typer.echo(f"runtime for .tflite models ({LITERT}): {hint}")


def _installed(package: str) -> bool:
    module = package.replace("-", "_")
    return importlib.util.find_spec(module) is not None or _version(package) != "not installed"
