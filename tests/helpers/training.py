"""Shared by the training tests: the tiny recipe, a small prepared dataset, a simulated
crash, the CLI in this process."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import lightning as L
import pytest

from dermaseg.config_io import load_config
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.recipes import shipped_recipe
from dermaseg.train.runner import train

TINY = [
    "model.arch=deeplabv3plus", "model.backbone=mobilenetv3_large_100",
    "model.aspp_channels=16", "model.decoder_channels=16", "data.image_size=48",
    "data.batch_size=4", "data.num_workers=0", "optim.lr=0.001", "optim.scheduler=plateau",
    "train.max_epochs=3", "train.checkpoint_every_steps=2", "train.checkpoint_every_minutes=0",
    "train.seed=7",
]
RECIPE = shipped_recipe("cpu_small")
STEPS_PER_EPOCH = 4  # 16 training images, batch 4
TIMING_COLUMNS = {"seconds", "minutes", "train_seconds", "images_per_s"}


class Interrupt(Exception):
    """Raised by `InterruptAt` to simulate a crash."""


class InterruptAt(L.Callback):
    """Crash after optimizer step `step`, before that step's checkpoint is written; or, with
    `in_validation`, once the validation after that step has started."""

    def __init__(self, step: int, in_validation: bool = False) -> None:
        self.step, self.in_validation = step, in_validation

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.in_validation:
            raise Interrupt()

    def on_validation_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step and self.in_validation:
            raise Interrupt()


def prepare_small(tmp_path_factory) -> Path:
    """A prepared dataset: 16 train + 4 val synthetic pairs at 48 px."""
    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("prepared")
    synth_dataset(20, raw, seed=3, options=SynthOptions(min_side=48, max_side=72),
                  progress=False)
    prepare_dataset(raw, out, size=48, val=0.2, test=0.0, seed=0, workers=1, progress=False)
    return out


def full_run(prepared: Path, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted 3-epoch run: (run folder, summary)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return out, train(tiny(), prepared, out, progress=False)


def tiny(*extra: str):
    return load_config(None, [*TINY, *extra])


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from dermaseg.cli import main

    monkeypatch.setattr(sys, "argv", ["dermaseg", "train", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err
