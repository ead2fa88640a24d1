"""Will a batch fit in memory? Estimated before the first image is read, from the model's
input size, so that a model whose metadata asks for a huge input (image_size 16384: about
100 GB a batch) is refused with a message instead of being killed by the kernel.

The estimate is rough on purpose: bytes per network-input pixel of one image, measured as the
peak memory of `Predictor.predict_letterboxed` on the CPU with ResNet-50 at 1024 px (input,
activations, logits and probabilities together; lighter backbones take less), times the
pixels of the largest TTA view, times the batch size. On a GPU only the host's share
(normalised input, logits, probabilities) is counted here.
"""

from __future__ import annotations

import os
import resource

from dermaseg.errors import DermasegError
from dermaseg.model_meta import ModelMeta

# (arch, output stride) -> peak bytes per input pixel of one image on the CPU; measured:
# deeplabv3 380 (OS 16) and 800 (OS 8), deeplabv3plus 680 (OS 16), ResNet-50 at 1024 px.
CPU_BYTES_PER_PIXEL = {("deeplabv3", 16): 400, ("deeplabv3", 8): 800,
                       ("deeplabv3plus", 16): 700, ("deeplabv3plus", 8): 1100}
HOST_BYTES_PER_PIXEL = 48  # float32 input twice, logits, float64 + float32 probabilities
GB = 1e9


def bytes_per_image(meta: ModelMeta, tta=None, on_gpu: bool = False) -> int:
    """Estimated peak bytes one image of a batch adds (see the module docstring)."""
    model = meta.config.model
    per_pixel = HOST_BYTES_PER_PIXEL if on_gpu else CPU_BYTES_PER_PIXEL.get(
        (model.arch, model.output_stride), max(CPU_BYTES_PER_PIXEL.values()))
    scale = max([1.0, *(getattr(tta, "scales", None) or ())])
    return int(per_pixel * (meta.image_size * scale) ** 2)


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the memory the system has
    available, the room left under a cgroup (container) limit and under an address-space
    limit (ulimit -v); None when none of them can be read."""
    values = [value for value in (_system_available(), _cgroup_room(), _address_space_room())
              if value is not None]
    return min(values) if values else None


def check_batch_memory(meta: ModelMeta, batch_size: int, where: str, tta=None,
                       on_gpu: bool = False) -> None:
    """Raises DermasegError, naming `where` (the model file), when a batch of `batch_size`
    images is estimated not to fit in the memory available; the message gives the batch
    size that would fit, if any."""
    available = available_memory()
    per_image = bytes_per_image(meta, tta, on_gpu)
    if available is None or per_image * batch_size <= available:
        return
    fits = available // per_image
    advice = (f"use --batch-size {fits} or less" if fits >= 1 else
              "not even one image fits: this model cannot run on this machine")
    raise DermasegError(
        f"{where}: its input size of {meta.image_size} px (image_size in its metadata) needs "
        f"about {per_image * batch_size / GB:.1f} GB for a batch of {batch_size} "
        f"({per_image / GB:.2f} GB per image), more than the {available / GB:.1f} GB "
        f"available here; {advice}")


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _read_number(path: str) -> int | None:
    """The integer in a cgroup file; None for "max", a missing or an unreadable file."""
    try:
        with open(path) as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cgroup_room() -> int | None:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_number(limit), _read_number(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # v1 "no limit" is ~2^63
            return max(0, cap - used)
    return None


def _address_space_room() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as handle:
            size = next(int(line.split()[1]) * 1024 for line in handle
                        if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        return None
    return max(0, soft - size)
