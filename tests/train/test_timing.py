"""`TimeSplit`: exclusive parts on a clock the test advances (the training run's own figures
are checked in test_train.py)."""

from __future__ import annotations

import pytest

from dermaseg.train import timing
from dermaseg.train.timing import TimeSplit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    return clock


def test_a_part_inside_another_counts_only_as_itself(clock):
    split = TimeSplit()
    split.begin("validation")
    clock.now += 2.0
    with split.part("checkpoints"):
        clock.now += 0.5
    clock.now += 1.0
    split.end("validation")
    clock.now += 0.25  # between parts: "other"
    assert split.seconds["validation"] == pytest.approx(3.0)
    assert split.seconds["checkpoints"] == pytest.approx(0.5)
    result = split.as_dict(total=4.0)
    assert result["other"] == pytest.approx(0.5)
    assert result["fractions"]["validation"] == pytest.approx(0.75)


def test_an_end_without_its_begin_counts_nothing(clock):
    split = TimeSplit()
    split.end("steps")  # e.g. resumed between a batch's start and its end
    with pytest.raises(RuntimeError), split.part("curves"):
        split.begin("steps")  # left open by the exception: ends with the outer part
        clock.now += 1.0
        raise RuntimeError
    assert split.seconds == {"steps": 1.0, "validation": 0.0, "checkpoints": 0.0,
                             "curves": 0.0}
    assert not split._open
