"""One way to map a function over items in worker processes with a progress bar, and the
number of CPU cores this process may use."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from dermaseg.errors import DermasegError
from dermaseg.progress import Progress

Item = TypeVar("Item")
Result = TypeVar("Result")


def usable_cores() -> int:
    """CPU cores this process may use: its affinity where the OS has one (Linux: a container's
    or `taskset`'s limit), else all of the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_map(work: Callable[[Item], Result], items: Sequence[Item], workers: int,
                 bar: Progress, what: str, serial_below: int = 8) -> list[Result]:
    """`[work(item) for item in items]` in order, in `workers` processes, updating `bar`.

    Runs in this process when `workers` <= 1 or there are fewer than `serial_below` items.

    Raises:
        DermasegError: a worker process died (e.g. killed for memory), naming `what`.
    """
    results: list[Result] = []
    if workers <= 1 or len(items) < serial_below:
        for item in items:
            results.append(work(item))
            bar.update()
        return results
    chunk = max(1, min(16, len(items) // (workers * 8)))
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
            for result in pool.map(work, items, chunksize=chunk):
                results.append(result)
                bar.update()
    except BrokenProcessPool as exc:
        raise DermasegError(
            f"a {what} process died (out of memory?); run again with --workers 1"
        ) from exc
    return results
