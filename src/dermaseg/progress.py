"""Progress of long loops, one way everywhere: a tqdm bar on a terminal; in a log file or a
pipe (where a bar is carriage-return noise) a few plain lines: the start, one at each tenth
of the way (at most one every `min_gap_s` seconds), one every `every_s` seconds of a long
stretch without, and the end with the time taken. Written to stderr, as tqdm does."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TextIO


class Progress(Protocol):
    """What the package's loops use of a progress bar."""

    def update(self, n: int = 1) -> Any: ...
    def close(self) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> Any: ...
    def __iter__(self) -> Iterator: ...


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
             unit: str = "item", initial: int = 0, enabled: bool = True,
             byte_units: bool = False, stream: TextIO | None = None) -> Progress:
    """A progress bar over `iterable` (or updated by hand up to `total`): tqdm on a terminal,
    LineProgress elsewhere, nothing when not `enabled`.

    Args:
        desc: what is being done ("checking", "evaluate").
        unit: what is counted, singular ("image"); `byte_units`: the count is bytes.
        stream: where to write (default: sys.stderr, read at the call).
    """
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        scale = {"unit_scale": True, "unit_divisor": 1024} if byte_units else {}
        return tqdm(iterable, total=total, desc=desc, unit="B" if byte_units else unit,
                    initial=initial, file=stream, **scale)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, initial=initial,
                        byte_units=byte_units, stream=stream)


class LineProgress:
    """Progress as a few whole lines, for output that is not a terminal."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str,
                 total: int | None = None, unit: str = "item", initial: int = 0,
                 byte_units: bool = False, stream: TextIO | None = None,
                 every_s: float = 60.0, min_gap_s: float = 5.0) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n, self.byte_units = initial, byte_units
        self.stream = sys.stderr if stream is None else stream
        self.every_s, self.min_gap_s = every_s, min_gap_s
        self._start = self._last = time.monotonic()
        self._tenth = self._tenths()
        self._closed = False
        self._write(f"{self.desc}: {self._count()}")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = self._tenths()
        new_tenth = tenth > self._tenth and now - self._last >= self.min_gap_s
        if self._closed or self.n == self.total or not (new_tenth or
                                                         now - self._last >= self.every_s):
            return
        self._tenth, self._last = tenth, now
        share = f" ({100 * self.n // self.total} %)" if self.total else ""
        self._write(f"{self.desc}: {self._count()}{share}, {now - self._start:.0f} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        seconds = time.monotonic() - self._start
        rate = f", {self._amount(self.n / seconds)}/s" if seconds > 0 and self.n else ""
        stopped = "" if self.total is None or self.n >= self.total else " (stopped)"
        self._write(f"{self.desc}: {self._count()} in {seconds:.1f} s{rate}{stopped}")

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        finally:
            self.close()

    def _tenths(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def _count(self) -> str:
        if self.total is None:
            return self._amount(self.n)
        if self.byte_units:
            return f"{self._amount(self.n)} of {self._amount(self.total)}"
        return f"{self.n}/{self.total} {self.unit}{'' if self.total == 1 else 's'}"

    def _amount(self, value: float) -> str:
        """160 images, 2.3 images (a rate), 12.5 MiB."""
        if self.byte_units:
            for unit in ("B", "KiB", "MiB"):
                if value < 1024:
                    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
                value /= 1024
            return f"{value:.1f} GiB"
        number = f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"
        return f"{number} {self.unit}{'' if value == 1 else 's'}"

    def _write(self, line: str) -> None:
        if self.total == 0:  # nothing to do: nothing to report
            return
        self.stream.write(line + "\n")
        self.stream.flush()
