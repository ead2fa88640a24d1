"""A time budget on a slow or busy machine. Real training of the tiny model with its epochs
slowed on purpose (a callback that sleeps, as a loaded CPU stretches them): the run says how
many epochs fitted, how long each took against the expected time, why, and what to do;
train.min_epochs trains on past the budget with the schedule stretched to match; the demo's
closing words blame the machine's load, not the software."""

from __future__ import annotations

import json
import logging
import math
import statistics
import time

import lightning as L
import pytest

from dermaseg.demo import MIN_EPOCHS, DemoResult, judgement
from dermaseg.train.pace import Pace, budget_words, seconds
from dermaseg.train.progress_lines import ProgressLines
from dermaseg.train.runner import train
from helpers.training import read_rows, tiny

pytestmark = pytest.mark.usefixtures("one_thread")
BUDGET = 0.1  # minutes: room for a first epoch of a few seconds on a loaded machine
SLOW = 0.6  # seconds added to each batch: 4 batches, so at most 2 epochs in the budget


class SlowEpochs(L.Callback):
    """Sleeps after every training batch: the run's view of a machine busy with other work."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


class Lines(logging.Handler):
    """The lines Lightning's logger (and so our rank_zero_info) says, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def slowed(tiny_prepared, tmp_path_factory):
    """A 6-second budget, epochs planned at 0.2 s, each batch 0.6 s longer, with the progress
    lines of a log file: (run, summary, the lines said)."""
    out = tmp_path_factory.mktemp("runs") / "slowed"
    config = tiny("train.max_epochs=30", f"train.max_minutes={BUDGET}",
                  "train.expected_epoch_seconds=0.2")
    said, logger = Lines(), logging.getLogger("lightning.pytorch")
    logger.addHandler(said)
    try:
        summary = train(config, tiny_prepared, out, progress=False,
                        callbacks=[SlowEpochs(SLOW), ProgressLines(every_s=1e9)])
    finally:
        logger.removeHandler(said)
    return out, summary, said.lines


def test_a_budget_that_fits_few_slow_epochs_says_why_and_what_to_do(slowed):
    out, summary, _ = slowed
    pace = summary["pace"]
    epochs = summary["epochs"]
    assert summary["stopped_by"] == "time_budget" and 1 <= epochs <= 3
    assert pace["epochs_in_budget"] == epochs == len(pace["epoch_seconds"])
    assert min(pace["epoch_seconds"]) >= 4 * SLOW  # 4 batches an epoch
    typical = statistics.median(pace["epoch_seconds"])
    note = pace["note"]
    assert note.startswith(f"the {BUDGET}-min time budget fitted only {epochs} epoch")
    assert f"{seconds(typical)} each against ~0.2 s expected (as measured by dermaseg plan)" \
        in note
    assert note.endswith(f"rerun when the machine is free, or with --minutes "
                         f"{math.ceil(BUDGET * typical / 0.2)}")
    assert json.loads((out / "summary.json").read_text())["pace"]["note"] == note


def test_epoch_lines_show_the_budget_and_stopping_comes_after_the_last(slowed):
    """Under a time budget an epoch's line shows the budget's standing, not "epoch 1/29"
    (max_epochs, which the budget stops long before); the stop is said after the line of
    the epoch it ends with, in the order things happened."""
    _, summary, lines = slowed
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == summary["epochs"]
    for number, line in enumerate(epochs):
        assert line.startswith(f"epoch {number} (time budget {BUDGET} min"), line
        assert "/29" not in line and "val_dice" in line
    assert "last epoch): " in epochs[-1]
    stop = next(i for i, line in enumerate(lines) if line.startswith(f"time budget of {BUDGET}"))
    assert lines[stop].endswith("stopping") and stop > lines.index(epochs[-1])


def test_budget_words_say_what_is_left_and_at_this_pace_how_many_epochs():
    words = budget_words(18 * 60, 450, 55, last=False, more_by_max=187)
    assert words == "time budget 18 min, 7.5 min left, ~8 more epochs"
    assert budget_words(18 * 60, 450, 55, last=False, more_by_max=3).endswith("~3 more epochs")
    assert budget_words(18 * 60, 40, None, last=False, more_by_max=9) == \
        "time budget 18 min, 40 s left"  # inside an epoch: no estimate
    assert budget_words(60, 5, 20, last=True, more_by_max=9) == \
        "time budget 1 min, 5.0 s left, last epoch"
    assert budget_words(60, -3, 20, last=False, more_by_max=9, short_of_min=2) == \
        "time budget 1 min spent, 2 more epochs to train.min_epochs"


def test_min_epochs_trains_on_past_the_budget_and_stretches_the_schedule(tiny_prepared,
                                                                          tmp_path, capsys):
    config = tiny("train.max_epochs=30", "train.max_minutes=0.02", "train.min_epochs=3",
                  "train.expected_epoch_seconds=0.1", "optim.scheduler=cosine",
                  "optim.anneal_by_time=true")
    summary = train(config, tiny_prepared, tmp_path / "run", progress=False,
                    callbacks=[SlowEpochs(0.2)])
    assert summary["epochs"] == 3 and summary["stopped_by"] == "time_budget"
    pace = summary["pace"]
    assert pace["epochs_in_budget"] < 3
    assert "trained on to 3 epochs (train.min_epochs=3)" in pace["note"]
    assert f"note: {pace['note']}" in capsys.readouterr().err
    # the schedule ran over the 3 epochs, not over the 1.2 s budget (spent in the first)
    rates = [float(row["lr"]) for row in read_rows(tmp_path / "run" / "metrics.csv")]
    assert rates[0] > rates[1] > rates[2] > 0.1 * config.optim.lr


def test_a_busy_cpu_is_named_with_its_load_and_a_budget_to_match():
    pace = Pace(budget_minutes=4, epoch_seconds=[88.0, 66.0, 54.0], epochs_in_budget=3,
                loads=[9.3, 9.9, 9.5], cores=2)
    assert not pace.slowed() and pace.busy()  # no plan to compare with: the load tells
    assert pace.note() == (
        "the 4-min time budget fitted only 3 epochs, 66 s each: the CPU is busy (load "
        "average 9.5 on 2 cores: other processes had most of it); rerun when the machine is "
        "free, or with --minutes 19")
    quiet = Pace(budget_minutes=4, epoch_seconds=[5.0, 4.8, 4.9], epochs_in_budget=3,
                 loads=[2.1], cores=2)
    assert quiet.note() is None


def test_a_first_epoch_longer_than_the_budget_is_said_as_such():
    """The budget spent inside the first epoch (which is finished and validated): "no whole
    epoch" fitted, and no "trained on" clause when train.min_epochs did not ask for it."""
    pace = Pace(budget_minutes=0.05, epoch_seconds=[3.1], epochs_in_budget=0,
                expected_seconds=0.2, loads=[1.0], cores=2, minutes=0.1)
    note = pace.note()
    assert note is not None and note.startswith(
        "the 0.05-min time budget fitted no whole epoch, 3.1 s each against ~0.2 s expected")
    assert "trained on" not in note and "0 epochs" not in note
    extended = Pace(budget_minutes=0.05, epoch_seconds=[3.1, 2.9, 3.0], epochs_in_budget=0,
                    expected_seconds=0.2, loads=[1.0], cores=2, min_epochs=3, minutes=0.2)
    assert "; trained on to 3 epochs (train.min_epochs=3), 0.2 min in all;" in extended.note()


def test_the_demo_blames_the_load_not_the_software(slowed):
    note = slowed[1]["pace"]["note"]
    trained = DemoResult(out=slowed[0], epochs=MIN_EPOCHS, pace_note=note)
    text = "\n".join(judgement(trained))
    assert f"Training was slowed, not broken: {note}." in text
    assert f"after {MIN_EPOCHS} epochs, a Dice below 0.90 here means something is broken" in text
    short = "\n".join(judgement(DemoResult(out=slowed[0], epochs=3, pace_note=note)))
    assert "means something is broken" not in short and "Only 3 epochs trained" in short
