"""`dermaseg train --devices 2`: DDP on two CPU processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dermaseg.checkpoint import read_checkpoint
from helpers.training import RECIPE, TINY, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def train_ddp(tiny_prepared, out, *extra: str) -> subprocess.CompletedProcess:
    """`dermaseg train --devices 2` in a real process: 2 CPU processes, 2 epochs."""
    args = ["-m", "dermaseg", "train", "-c", str(RECIPE), "-d", str(tiny_prepared),
            "-o", str(out), "--devices", "2", "-q", "--set", "train.max_epochs=2"]
    args += [f"--set={item}" for item in [*TINY, *extra] if "max_epochs" not in item]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_trains_with_ddp_on_two_cpu_processes(tiny_prepared, tmp_path):
    out = tmp_path / "ddp"
    result = train_ddp(tiny_prepared, out)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    # 16 images, batch 4 per process: 2 steps per epoch.
    assert read_checkpoint(out / "last.ckpt")["global_step"] == 4


@pytest.mark.parametrize("setting", [
    "train.freeze_backbone_epoch=1",
    pytest.param("model.edge_head=true", marks=pytest.mark.slow)],
    ids=["late-freeze", "edge-head-without-boundary-loss"])
def test_ddp_trains_parameters_that_get_no_gradient(tiny_prepared, tmp_path, setting):
    """DDP refuses a step where some parameters got no gradient (the backbone frozen from
    epoch 1; an edge head whose output no loss uses) unless it looks for them."""
    result = train_ddp(tiny_prepared, tmp_path / "ddp", setting)
    assert result.returncode == 0, result.stderr[-2000:]
    if not torch.cuda.is_available():  # said once, by rank 0
        assert result.stderr.count("note: no GPU here: 2 processes train on the CPU") == 1
    assert read_checkpoint(tmp_path / "ddp" / "last.ckpt")["global_step"] == 4


def test_ddp_refuses_fewer_images_per_process_than_a_batch(monkeypatch, capsys, tiny_prepared,
                                                           tmp_path):
    """16 training images on 2 processes: 8 each, fewer than a batch of 10; refused before
    anything is written (it trained nothing and exited 0)."""
    code, err = run_cli(monkeypatch, capsys, "-c", str(RECIPE), "-d", str(tiny_prepared), "-o",
                        str(tmp_path / "r"), "--devices", "2", "-q", "-s", "data.image_size=48",
                        "-s", "data.batch_size=10")
    assert code == 1 and "16 training images (8 for each of 2 processes)" in err
    assert "data.batch_size=10" in err and not (tmp_path / "r").exists()
