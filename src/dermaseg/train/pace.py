"""Why a time budget fitted fewer epochs than it should have, in one line.

A run under `train.max_minutes` compares its epochs' pace with the expected one
(`train.expected_epoch_seconds`, which `dermaseg plan` measures; else the run's own fastest
epoch) and reads the machine's load average at each epoch's end. On a machine busy with
other work the budget fits a fraction of the epochs it would otherwise: the note says so, and
what to do, so that a weak model is not taken for a fault of the software.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field

SLOWER = 2.0  # epochs this many times slower than expected: the machine was slowed down
# 1-minute load average per core above which the CPU counts as busy while we train: our own
# threads account for about 1 per core, other processes for the rest.
BUSY_LOAD = 1.5


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def budget_words(budget_s: float, left_s: float, epoch_s: float | None, *, last: bool,
                 more_by_max: int, short_of_min: int = 0) -> str:
    """What an epoch's progress line says under a time budget, in place of `max_epochs`
    (which the budget usually stops long before): "time budget 18 min, 7.5 min left, ~8 more
    epochs" (the estimate, at the pace of `epoch_s`, when given, and never past max_epochs),
    "..., last epoch" when the run stops after this one, "time budget 18 min spent" after it.
    `short_of_min`: epochs still to train to train.min_epochs."""
    words = f"time budget {budget_s / 60:g} min"
    if left_s > 0:
        words += f", {seconds(left_s) if left_s < 60 else f'{left_s / 60:.1f} min'} left"
    else:
        words += " spent"
    if last:
        return words + ", last epoch"
    if left_s <= 0:
        if short_of_min > 0:
            words += (f", {short_of_min} more epoch{'' if short_of_min == 1 else 's'} to "
                      "train.min_epochs")
        return words
    if epoch_s:
        more = max(0, min(max(int(left_s // epoch_s), short_of_min), more_by_max))
        words += f", ~{more} more epoch{'' if more == 1 else 's'}"
    return words


@dataclass
class Pace:
    """The epochs of a run under a time budget, and what the machine was doing meanwhile."""

    budget_minutes: float
    epoch_seconds: list[float]  # each validated epoch's duration, in order
    epochs_in_budget: int  # epochs done before the budget was spent
    expected_seconds: float | None = None  # train.expected_epoch_seconds
    loads: list[float] = field(default_factory=list)  # load average at each epoch's end
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    min_epochs: int = 0
    minutes: float = 0.0  # training time in all

    @property
    def typical(self) -> float:
        return statistics.median(self.epoch_seconds)

    @property
    def load(self) -> float | None:
        return statistics.median(self.loads) if self.loads else None

    def reference(self) -> tuple[float, str]:
        """(an epoch's expected seconds, where that figure comes from)."""
        if self.expected_seconds is not None:
            return self.expected_seconds, "as measured by dermaseg plan"
        return min(self.epoch_seconds), "this run's fastest epoch"

    def slowed(self) -> bool:
        return bool(self.epoch_seconds) and self.typical > SLOWER * self.reference()[0]

    def busy(self) -> bool:
        return self.load is not None and self.load > BUSY_LOAD * self.cores

    def note(self) -> str | None:
        """One line, when the epochs were slow or the CPU busy; else None."""
        if not self.epoch_seconds or not (self.slowed() or self.busy()):
            return None
        count = self.epochs_in_budget
        fitted = (f"the {self.budget_minutes:g}-min time budget fitted "
                  f"{f'only {count} epoch' if count else 'no whole epoch'}"
                  f"{'s' if count > 1 else ''}, {seconds(self.typical)} each")
        if self.slowed():
            expected, source = self.reference()
            fitted += f" against ~{seconds(expected)} expected ({source})"
        cause = (f"the CPU is busy (load average {self.load:.1f} on {self.cores} cores: other "
                 "processes had most of it)" if self.busy() else
                 "the machine ran slower than expected (other work on it?)")
        extended = (f"; trained on to {len(self.epoch_seconds)} epochs (train.min_epochs="
                    f"{self.min_epochs}), {self.minutes:.1f} min in all"
                    if len(self.epoch_seconds) > self.epochs_in_budget
                    and self.min_epochs > self.epochs_in_budget else "")
        return (f"{fitted}: {cause}{extended}; rerun when the machine is free, or with "
                f"--minutes {self.minutes_needed()}")

    def minutes_needed(self) -> int:
        """Minutes that would fit, at this run's pace, the epochs expected in the budget: at
        the expected pace when there is one, else at the pace of a machine free of the load
        (the load average over the cores as the slow-down)."""
        if self.slowed():
            factor = self.typical / self.reference()[0]
        else:
            factor = max(1.0, (self.load or 0.0) / self.cores)
        return math.ceil(self.budget_minutes * factor)

    def as_dict(self) -> dict:
        return asdict(self)
