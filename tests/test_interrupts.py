"""Interrupted work for real: `predict` and `train` killed with SIGKILL at a random moment in a
subprocess, then run again; a full disk (a 1 MiB tmpfs) while writing a checkpoint or a mask.
(`data prepare` killed with SIGKILL: tests/data/test_prepare.py.)"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermaseg.checkpoint import read_checkpoint, save_checkpoint
from dermaseg.config import Config
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.errors import DermasegError
from dermaseg.fileio import save_png_atomic
from dermaseg.model_meta import ModelMeta
from dermaseg.train.callbacks import AtomicCheckpointIO
from helpers.badinputs import leftovers, run_cli


def kill_when(process: subprocess.Popen, ready, timeout: float = 300.0) -> bool:
    """SIGKILL `process` at a random moment after `ready()` first holds; False if it ended."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.5))
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return alive


def test_predict_killed_then_rerun_gives_every_mask_once(tiny_ckpt, tmp_path):
    images = tmp_path / "images"
    synth_dataset(24, images, seed=5, options=SynthOptions(min_side=120, max_side=200),
                  progress=False)
    out, reference = tmp_path / "out", tmp_path / "reference"
    command = [sys.executable, "-m", "dermaseg", "predict", str(tiny_ckpt), str(images), "-o",
               str(out), "--batch-size", "1", "--quiet", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = kill_when(process, lambda: len(list(out.glob("*_segmentation.png"))) >= 2)
    done_before = {p.name for p in out.glob("*_segmentation.png")}
    for mask in done_before:  # every file present is whole
        with Image.open(out / mask) as handle:
            handle.load()
    code, output = run_cli("predict", tiny_ckpt, images, "-o", out, "--quiet")
    assert code == 0, output
    assert f"{24 - len(done_before)} written, {len(done_before)} already there" in output
    assert not leftovers(out)
    code, _ = run_cli("predict", tiny_ckpt, images, "-o", reference, "--quiet")
    names = sorted(p.name for p in out.glob("*_segmentation.png"))
    assert names == sorted(p.name for p in reference.glob("*_segmentation.png"))
    assert len(names) == 24
    quality = sorted(p.name for p in (out / "quality").iterdir())
    assert quality == [name.replace("_segmentation.png", ".json") for name in names]
    assert (out / "quality.csv").read_bytes() == (reference / "quality.csv").read_bytes()
    for name in names:  # the same masks as an uninterrupted run: nothing lost or corrupt
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert killed or len(done_before) == 24


TINY = ["model.arch=deeplabv3plus", "model.backbone=mobilenetv3_large_100",
        "model.aspp_channels=16", "model.decoder_channels=16", "data.image_size=48",
        "data.batch_size=4", "data.num_workers=0", "optim.scheduler=none",
        "train.max_epochs=3", "train.checkpoint_every_steps=1",
        "train.checkpoint_every_minutes=0", "train.seed=3"]


@pytest.mark.slow
def test_train_killed_then_resumed_completes_every_epoch_once(synth_dir, tmp_path):
    from dermaseg.data.prepare import prepare_dataset

    data, run = tmp_path / "data", tmp_path / "run"
    prepare_dataset(synth_dir, data, size=48, workers=1, progress=False)
    sets = [x for s in TINY for x in ("-s", s)]
    command = [sys.executable, "-m", "dermaseg", "train", "-c", "cpu_small",
               "-d", str(data), "-o", str(run), "-q", *sets]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=Path(__file__).resolve().parents[1])
    assert kill_when(process, lambda: (run / "last.ckpt").exists()), "ended before the kill"
    step = read_checkpoint(run / "last.ckpt")["global_step"]  # whole, readable
    code, output = run_cli("train", "-d", data, "-o", run, "--resume", "-q",
                           *[x for s in TINY for x in ("-s", s)])
    assert code == 0, output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3
    final = read_checkpoint(run / "last.ckpt")
    assert final["global_step"] == 3 * 2 >= step  # 8 training images, batch 4, 3 epochs
    with open(run / "metrics.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1, 2], epochs  # no epoch lost or logged twice
    assert not leftovers(run)


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (we run as root in CI); skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    yield folder
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["umount", str(folder)], check=True, capture_output=True, timeout=30)


def test_full_disk_keeps_the_previous_checkpoint(tiny_disk):
    meta = ModelMeta.from_config(Config())
    path = tiny_disk / "last.ckpt"
    save_checkpoint(path, torch.nn.Linear(2, 2), meta)
    before = path.read_bytes()
    with pytest.raises(DermasegError, match="last.ckpt: cannot write checkpoint.*disk full"):
        save_checkpoint(path, torch.nn.Linear(1000, 1000), meta)
    with pytest.raises(DermasegError, match="last.ckpt: cannot write checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000, 1000)}, path)
    assert path.read_bytes() == before
    assert read_checkpoint(path)["state_dict"]["weight"].shape == (2, 2)
    assert [p.name for p in tiny_disk.iterdir()] == ["last.ckpt"]
    noise = np.random.default_rng(0).integers(0, 255, (1500, 1500), dtype=np.uint8)
    with pytest.raises(DermasegError, match="m.png: cannot write .No space left"):
        save_png_atomic(tiny_disk / "m.png", noise)
    assert [p.name for p in tiny_disk.iterdir()] == ["last.ckpt"]


def test_full_disk_while_predicting_is_a_clear_error(tiny_disk, tiny_ckpt, tmp_path):
    image = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (900, 1200, 3), np.uint8)).save(
        image)
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # leave 64 KiB
    out = tiny_disk / "masks"
    code, output = run_cli("predict", tiny_ckpt, image, "-o", out, "--overlay", "--quiet")
    assert code == 1 and "No space left on device" in output and "Traceback" not in output
    assert not leftovers(tiny_disk)
    assert not list(out.glob("*_segmentation.png"))
    shutil.rmtree(out, ignore_errors=True)
