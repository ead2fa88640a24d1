"""This machine for `dermaseg plan` (and `dermaseg doctor`): the device training would use,
CPU cores, memory and load, and a warning when a CPU probe ran on a busy machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dermaseg.errors import UsageError
from dermaseg.parallel import usable_cores

DEVICES = ("auto", "cpu", "cuda", "mps")
BUSY_LOAD = 0.5  # CPU probe: warn above this load average per core (other work running)


def memory_bytes() -> tuple[int, int] | None:
    """(available, total) memory in bytes: available as `dermaseg.infer.memory` counts it (the
    least of the system's available memory, a container's and a ulimit's room), total the
    machine's; None when either cannot be read."""
    from dermaseg.infer.memory import available_memory

    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:  # not Linux
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    available = available_memory()
    return None if available is None else (available, total)


def resolve_device(device: str) -> str:
    """"cuda", "mps" or "cpu": what `device` ("auto": what training would use) means here.

    Raises:
        UsageError: an unknown name, or a device this machine does not have.
    """
    import torch

    if device.startswith("cuda:"):  # training takes the visible GPUs in order
        raise UsageError(f"--device {device}: choose the GPU with CUDA_VISIBLE_DEVICES: "
                         f"`CUDA_VISIBLE_DEVICES={device.removeprefix('cuda:')} dermaseg plan "
                         "... --device cuda`, and train the same way")
    if device not in DEVICES:
        raise UsageError(f"--device {device}: must be one of {', '.join(DEVICES)}")
    mps = getattr(torch.backends, "mps", None)
    have = {"cpu": True, "cuda": torch.cuda.is_available(),
            "mps": mps is not None and mps.is_available()}
    if device == "auto":
        return next(name for name in ("cuda", "mps", "cpu") if have[name])
    if not have[device]:
        raise UsageError(f"--device {device}: not available on this machine "
                         "(`dermaseg doctor` lists what is)")
    return device


def machine_fingerprint(device: str) -> dict[str, Any]:
    """The training device ("cuda": name and memory; "mps"; "cpu"), CPU cores and RAM."""
    import torch

    info: dict[str, Any] = {"device": device, "cpu_cores": usable_cores()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"name": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "gpus": torch.cuda.device_count()}
    else:
        info["name"] = "Apple MPS" if device == "mps" else "CPU"
    try:  # processes waiting for a core, averaged over the last minute (not on Windows)
        info["load_average"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        info["load_average"] = None
    memory = memory_bytes()
    info["ram_available_gib"] = None if memory is None else round(memory[0] / 2**30, 1)
    info["ram_total_gib"] = None if memory is None else round(memory[1] / 2**30, 1)
    return info


def busy_warning(machine: dict, probed: bool) -> list[str]:
    """A warning when the CPU probe ran while other work kept over half the cores busy."""
    load, cores = machine.get("load_average"), machine["cpu_cores"]
    if not probed or machine["device"] != "cpu" or load is None or load <= BUSY_LOAD * cores:
        return []
    return [f"the CPU was busy while probing (load {load:g} on {cores} cores): the speeds "
            "and the time estimate are what this load leaves; plan again on a quiet machine"]
