"""Training: real short runs on synthetic data (tiny MobileNetV3 DeepLab-v3+, 48 px).

The runs use one torch thread: on a shared 2-core machine that is several times faster than
two threads fighting other processes, and it changes nothing in what is checked.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from dermaseg.checkpoint import load_model, model_state_dict, read_checkpoint
from dermaseg.config_io import load_config
from dermaseg.errors import DermasegError
from dermaseg.train.callbacks import AtomicCheckpointIO, BackgroundCheckpointIO
from dermaseg.train.module import LRShape, SegmentationModule
from dermaseg.train.runner import train
from helpers.training import (
    RECIPE,
    STEPS_PER_EPOCH,
    TINY,
    full_run,
    read_rows,
    run_cli,
    tiny,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_prepared, tmp_path_factory):
    return full_run(tiny_prepared, tmp_path_factory)


def test_run_writes_every_artefact(run):
    out, summary = run
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "data.json", "best.ckpt", "last.ckpt", "metrics.csv", "curves.png",
            "summary.json"} <= names
    assert json.loads((out / "data.json").read_text()) == summary["data"]
    assert not [n for n in names if n.endswith(".tmp")]
    assert load_config(out / "config.yaml") == tiny()
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for column in ("train_loss", "val_loss", "val_dice", "val_iou", "val_sensitivity",
                   "val_specificity", "val_precision", "val_accuracy",
                   "val_threshold_jaccard", "lr", "seconds", "images_per_s"):
        assert all(np.isfinite(float(r[column])) for r in rows), column
    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.width > 600
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    dice = [float(r["val_dice"]) for r in rows]
    assert summary["best_epoch"] == int(np.argmax(dice))
    assert summary["best"]["val_dice"] == pytest.approx(max(dice), abs=1e-5)
    assert summary["epochs"] == 3 and summary["stopped_by"] == "max_epochs"
    assert summary["images_per_s"] > 0 and summary["seconds_per_epoch"] > 0


def test_checkpoints_load_for_inference(run):
    out, summary = run
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = read_checkpoint(out / name)  # weights_only=True
        assert "hyper_parameters" not in checkpoint
        model, meta = load_model(out / name)
        assert meta.image_size == 48 and meta.config == tiny()
        with torch.no_grad():
            logits = model(torch.zeros(2, 3, 48, 48))
        assert logits.shape == (2, 1, 48, 48) and torch.isfinite(logits).all()
    best = read_checkpoint(out / "best.ckpt")
    assert best["epoch"] == summary["best_epoch"]
    last = read_checkpoint(out / "last.ckpt")
    assert last["global_step"] == 3 * STEPS_PER_EPOCH
    # best.ckpt is for inference: no optimizer state, a fraction of last.ckpt's size
    assert "optimizer_states" not in best and "optimizer_states" in last
    assert (out / "best.ckpt").stat().st_size < 0.6 * (out / "last.ckpt").stat().st_size


class RecordLastSaves(L.Callback):
    """The global steps at which last.ckpt was (re)written, seen after every batch and at the
    end of training."""

    def __init__(self, path) -> None:
        self.path, self.saved, self._mtime = path, [], None

    def _look(self, trainer) -> None:
        if self.path.exists() and self.path.stat().st_mtime_ns != self._mtime:
            self._mtime = self.path.stat().st_mtime_ns
            self.saved.append(read_checkpoint(self.path)["global_step"])

    def on_train_batch_start(self, trainer, *args) -> None:
        self._look(trainer)

    def on_fit_end(self, trainer, *args) -> None:
        self._look(trainer)


@pytest.mark.parametrize(("minutes", "expected"), [
    (0, [2, 4, 6, 8, 10, 12]),  # every 2 steps and every epoch end (4, 8 and 12)
    (60, [12]),  # an hour apart: only the end of the run
])
def test_last_checkpoint_interval(tiny_prepared, tmp_path, minutes, expected):
    out = tmp_path / "run"
    record = RecordLastSaves(out / "last.ckpt")
    train(tiny(f"train.checkpoint_every_minutes={minutes}"), tiny_prepared, out, progress=False,
          callbacks=[record])
    assert record.saved == expected
    with Image.open(out / "curves.png") as image:  # drawn at the end whatever the interval
        assert image.format == "PNG"


def test_loss_goes_down(run):
    rows = read_rows(run[0] / "metrics.csv")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


def test_summary_says_where_the_seconds_went(run):
    """summary.json's "time": steps, validation, checkpoint writing and curves each measured,
    exclusive of each other; "other" is the rest, and the parts add up to the run's time."""
    _, summary = run
    time_split = summary["time"]
    parts = ("steps", "validation", "checkpoints", "curves", "other")
    assert time_split["total"] == pytest.approx(summary["session_seconds"], abs=2e-3)
    assert sum(time_split[p] for p in parts) == pytest.approx(time_split["total"], abs=5e-3)
    assert sum(time_split["fractions"].values()) == pytest.approx(1.0, abs=1e-3)
    for part in ("steps", "validation", "checkpoints", "curves"):
        assert time_split[part] > 0, part
    # each of the 3 epochs writes last.ckpt (and best.ckpt when Dice improves), at least ms each
    assert time_split["checkpoints"] > 3 * 1e-3
    assert time_split["steps"] > time_split["validation"]  # 16 images trained, 4 validated


class RecordBatches(L.Callback):
    """The training batches as the model receives them (after the device-side hooks)."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, masks, indices = batch
        self.seen.append((images.clone(), masks.clone(), indices.clone()))


@pytest.mark.parametrize(("place", "gather_on"),
                         [("loader", "loader"), ("device", "loader"), ("device", "device")])
def test_augmentation_reaches_the_model_wherever_it_runs(tiny_prepared, tmp_path, place, gather_on):
    """Flips with probability 1 (the other augmentations off): every image and mask the model
    receives is the prepared one flipped both ways and normalised, on every path (also when
    the batches are gathered from the split kept on the device)."""
    from dermaseg.data.dataset import PreparedDataset
    from dermaseg.data.transforms import normalise_images

    config = tiny(f"data.augment_on={place}", f"data.gather_on={gather_on}",
                  "train.max_epochs=1", "data.augment.hflip=1",
                  "data.augment.vflip=1", "data.augment.brightness=0",
                  "data.augment.contrast=0", "data.augment.elastic_p=0")
    record = RecordBatches()
    train(config, tiny_prepared, tmp_path / place, progress=False, callbacks=[record])
    dataset = PreparedDataset(tiny_prepared, "train", cache=False)
    assert len(record.seen) == STEPS_PER_EPOCH
    for images, masks, indices in record.seen:
        for image, mask, index in zip(images, masks, indices.tolist(), strict=True):
            array, lesion = dataset.arrays(index)
            flipped = torch.from_numpy(array).permute(2, 0, 1).flip(-1).flip(-2)
            expected = normalise_images(flipped, config.data.mean, config.data.std)
            torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)
            assert torch.equal(mask[0], torch.from_numpy(lesion).flip(-1).flip(-2).float())


class RecordBackbone(L.Callback):
    """Copies of the backbone weights and BN statistics at the end of every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.trainable: list[bool] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        backbone = pl_module.model.backbone
        self.states.append({k: v.detach().clone() for k, v in backbone.state_dict().items()})
        self.trainable.append(any(p.requires_grad for p in backbone.parameters()))


class HalveLR(L.Callback):
    """Stands in for the plateau scheduler: cut the LR at the end of every epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for group in trainer.optimizers[0].param_groups:
            group["lr"] *= 0.5


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before
               if before[k].is_floating_point())


@pytest.mark.parametrize("setting", ["train.freeze_backbone_epoch=2",
                                     "train.freeze_after_lr_drops=2"])
def test_late_freeze_stops_backbone_training(tiny_prepared, tmp_path, setting):
    record = RecordBackbone()
    extra = [record] + ([HalveLR()] if "drops" in setting else [])
    train(tiny(setting), tiny_prepared, tmp_path / "run", progress=False, callbacks=extra)
    assert record.trainable == [True, True, False]
    assert changed(record.states[0], record.states[1])  # trained in epoch 1
    # Frozen in epoch 2: weights and BatchNorm running statistics unchanged.
    assert not changed(record.states[1], record.states[2])


def test_plateau_warm_up_is_no_lr_drop_and_keeps_a_cut(tiny_prepared, tmp_path):
    """The warm-up's rising LR was counted as a drop (the backbone froze in epoch 1), the
    lr column showed the full LR for epoch 0, and a cut during warm-up was overwritten."""
    record = RecordBackbone()
    warm = ["optim.warmup_epochs=2", "train.freeze_after_lr_drops=1"]
    train(tiny(*warm), tiny_prepared, tmp_path / "warm", progress=False, callbacks=[record])
    assert record.trainable == [True, True, True]
    lr = [float(row["lr"]) for row in read_rows(tmp_path / "warm" / "metrics.csv")]
    steps = 2 * STEPS_PER_EPOCH  # each epoch starts at the LR of its first step
    assert lr == pytest.approx([1e-3 / steps, 1e-3 * (STEPS_PER_EPOCH + 1) / steps, 1e-3])
    train(tiny("optim.warmup_epochs=2"), tiny_prepared, tmp_path / "cut", progress=False,
          callbacks=[HalveLR()])  # a cut at each epoch end, the first one during warm-up
    lr = [float(row["lr"]) for row in read_rows(tmp_path / "cut" / "metrics.csv")]
    assert lr == pytest.approx([1e-3 / steps, 0.5e-3 * (STEPS_PER_EPOCH + 1) / steps, 0.25e-3])


def test_an_edge_head_without_its_loss_is_said(tiny_prepared, tmp_path, capsys):
    train(tiny("model.edge_head=true", "train.max_epochs=1"), tiny_prepared, tmp_path / "run",
          progress=False)
    assert "the edge head gets no training signal" in capsys.readouterr().err


def nan_loader(bad_batches: set[int], batches: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batches * 2, 3, 32, 32, generator=generator)
    masks = (torch.rand(batches * 2, 1, 32, 32, generator=generator) > 0.5).float()
    for batch in bad_batches:
        images[batch * 2] = float("nan")
    return DataLoader(TensorDataset(images, masks, torch.arange(batches * 2)), batch_size=2)


def fit_plain(module, loader) -> None:
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)


def test_non_finite_loss_skips_the_batch_and_names_it():
    module = SegmentationModule(tiny("optim.scheduler=none"))
    with pytest.warns(UserWarning, match=r"non-finite loss .*batch 1 \(images: 2, 3\)"):
        fit_plain(module, nan_loader({1}))
    assert module.guard.skipped == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_non_finite_loss_in_a_row_stops_training():
    module = SegmentationModule(tiny("optim.scheduler=none", "train.nan_tolerance=1"))
    with pytest.raises(DermasegError, match=r"epoch 0, batch 1 .*2 batches in a row"):
        fit_plain(module, nan_loader({0, 1, 2}))


def test_progress_bar_shows_the_training_loss(tiny_prepared, tmp_path, monkeypatch, capsys):
    """In a terminal Lightning's bar runs; the loss it shows comes from TimedLossBar (the step
    loss is no prog_bar metric, which Lightning would read on the host at every step)."""
    import re
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(tiny("train.max_epochs=1"), tiny_prepared, tmp_path / "run", progress=True)
    output = capsys.readouterr()
    shown = [float(v) for v in re.findall(r"\bloss=([0-9.]+)", output.out + output.err)]
    assert shown and all(0 < value < 10 for value in shown)


def test_time_budget_stops_the_run(tiny_prepared, tmp_path):
    summary = train(tiny("train.max_minutes=0.0001"), tiny_prepared, tmp_path / "run",
                    progress=False)
    # Stopped after the first step; Lightning still validates the cut epoch.
    assert summary["stopped_by"] == "time_budget" and summary["epochs"] == 1
    assert read_checkpoint(tmp_path / "run" / "last.ckpt")["global_step"] == 1
    assert (tmp_path / "run" / "best.ckpt").is_file()


def test_atomic_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "dermaseg": {}}, path)
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails mid-write)
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: 0}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with pytest.warns(UserWarning, match="not written: the weights are no longer finite"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan"), 2.0])}}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_background_checkpoint_writes_the_state_at_the_save(tmp_path):
    path, weights = tmp_path / "best.ckpt", torch.ones(3)
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": weights}, "dermaseg": {}}, path)
    weights.add_(1)  # the next training step, while the file is being written
    with pytest.warns(UserWarning, match="not written: the weights are no longer finite"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([float("nan")])}}, path)
    for step in range(2 * io.MAX_PENDING):  # more saves than may wait: the oldest first
        io.save_checkpoint({"state_dict": {"w": torch.full((3,), float(step))}, "dermaseg": {}},
                           tmp_path / "x")
        assert len(io._written) <= io.MAX_PENDING
    io.teardown()  # training's end waits for the writes
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert torch.equal(io.load_checkpoint(tmp_path / "x")["state_dict"]["w"], torch.full((3,), 3.0))
    (tmp_path / "x").unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: 0}, path)
    with pytest.raises(Exception):  # noqa: B017  (the failed write surfaces at the end)
        io.teardown()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_cli_reports_bad_input(monkeypatch, capsys, tiny_prepared, run, tmp_path):
    code, err = run_cli(monkeypatch, capsys, "-c", "cpu_small", "-d",
                        str(tmp_path / "missing"), "-o", str(tmp_path / "r"))
    assert code == 2 and "missing: no such folder" in err
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim:\n  lr: fast\n")
    code, err = run_cli(monkeypatch, capsys, "-c", str(recipe), "-d", str(tiny_prepared),
                        "-o", str(tmp_path / "r"))
    assert code == 1 and "optim.lr" in err
    code, err = run_cli(monkeypatch, capsys, "-c", str(recipe), "-d", str(tiny_prepared),
                        "-o", str(run[0]))
    assert code != 0 and "optim.lr" in err
    (tmp_path / "copy.yaml").write_text((run[0] / "config.yaml").read_text())
    code, err = run_cli(monkeypatch, capsys, "-c", str(tmp_path / "copy.yaml"), "-d",
                        str(tiny_prepared), "-o", str(run[0]))
    assert code == 2 and "already holds a run" in err
    code, err = run_cli(monkeypatch, capsys, "-d", str(tiny_prepared), "-o", str(tmp_path / "r"),
                        "--resume")
    assert code == 2 and "no config.yaml" in err
    before = {f.name: f.read_bytes() for f in run[0].iterdir() if f.is_file()}
    code, err = run_cli(monkeypatch, capsys, "-d", str(tiny_prepared), "-o", str(run[0]),
                        "--resume")
    assert code == 2 and "has finished (stopped by max_epochs after 3 epochs)" in err, err
    assert {f.name: f.read_bytes() for f in run[0].iterdir() if f.is_file()} == before
    early = tmp_path / "killed_early"  # killed before its first last.ckpt
    early.mkdir()
    for name in ("config.yaml", "best.ckpt"):
        shutil.copy(run[0] / name, early)
    code, err = run_cli(monkeypatch, capsys, "-d", str(tiny_prepared), "-o", str(early), "--resume")
    assert code == 2 and "at most once per train.checkpoint_every_minutes" in err, err
    for option, words in ((["--minutes", "-1"], "--minutes -1.0 (train.max_minutes): must be"),
                          (["-s", "train.max_minute=1"], "did you mean train.max_minutes?")):
        code, err = run_cli(monkeypatch, capsys, "-c", "cpu_small", "-d",
                            str(tiny_prepared), "-o", str(tmp_path / "r2"), *option)
        assert code == 2 and words in err and "cpu_small.yaml" not in err, err
        assert not (tmp_path / "r2").exists()


def test_lr_shapes():
    cosine = LRShape("cosine", total=100, warmup=10)
    assert [cosine(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine(10) == 1.0 and cosine(55) == pytest.approx(0.5) and cosine(100) == 0.0
    cosine.time_progress = 0.5  # half the time budget spent: at least half-way down
    assert cosine(20) == pytest.approx(0.5)
    poly = LRShape("poly", total=100, warmup=0)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.5**0.9) and poly(100) == 0.0


def test_backbone_weights_from_a_training_checkpoint(run):
    """`model.weights=best.ckpt`: Lightning's state dict holds `train_loss_avg.*` beside the
    `model.*` weights; the backbone part is taken."""
    from dermaseg.models.factory import build_model

    checkpoint = run[0] / "best.ckpt"
    config = tiny(f"model.weights={checkpoint}").model
    model = build_model(config)
    trained = model_state_dict(read_checkpoint(checkpoint))
    backbone = model.backbone.state_dict()
    assert backbone and all(torch.equal(v, trained[f"backbone.{k}"]) for k, v in backbone.items())


def test_progress_in_a_log_file_is_one_line_per_epoch(tiny_prepared, tmp_path):
    """Output to a file (not a terminal): the progress bar would draw nothing until the end;
    each epoch prints one plain line with its metrics instead."""
    args = ["-m", "dermaseg", "train", "-c", str(RECIPE), "-d", str(tiny_prepared),
            "-o", str(tmp_path / "run"), *(f"--set={item}" for item in TINY),
            "--set=train.max_epochs=2"]
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines()
             if line.startswith("epoch ") and ": batch " not in line]  # a slow epoch has those
    # numbered as in the files; the recipe's 18-min budget shown, not max_epochs, and the
    # epochs it would fit at this pace never more than max_epochs allows
    assert [line.split(" (")[0] for line in lines] == ["epoch 0", "epoch 1"]
    assert lines[0].startswith("epoch 0 (time budget 18 min, ") and "~1 more epoch): " \
        in lines[0]
    assert lines[1].startswith("epoch 1 (time budget 18 min, ") and "last epoch): " in lines[1]
    assert all("val_dice 0." in line and "lr " in line for line in lines)
    assert "\r" not in output and "━" not in output
    for noise in ("GPU available", "TPU available", "HPU available", "LOCAL_RANK"):
        assert noise not in output, output  # Lightning's device lines say nothing here


def test_lightning_device_lines_are_dropped_its_warnings_kept(caplog):
    """The filter on Lightning's logger drops its "GPU/TPU available" info lines by their
    words: our own progress lines go through the same logger and stay, as do warnings."""
    import logging

    from lightning.pytorch.utilities import rank_zero_info

    import dermaseg.train.runner  # noqa: F401 (installs the filter)

    with caplog.at_level("INFO"):
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("epoch 0 (time budget 1 min, 30 s left, ~2 more epochs): loss 0.5")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning(
            "GPU available but not used.")
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 0 (time budget 1 min, 30 s left, ~2 more epochs): loss 0.5",
        "GPU available but not used."]


def test_progress_lines_show_val_metrics_only_for_validated_epochs(tiny_prepared, tmp_path, caplog):
    """train.val_every=2: epochs 1 and 3 are not validated; their lines must not repeat the
    last validation's numbers as if they were theirs."""
    from dermaseg.train.progress_lines import ProgressLines

    with caplog.at_level("INFO"):
        train(tiny("train.max_epochs=3", "train.val_every=2"), tiny_prepared, tmp_path / "run",
              progress=False, callbacks=[ProgressLines(every_s=1e9)])
    lines = {m.split(":")[0]: m for r in caplog.records
             if (m := r.getMessage()).startswith("epoch ") and ": batch " not in m}
    assert list(lines) == ["epoch 0/2", "epoch 1/2", "epoch 2/2"]
    assert "val_dice" in lines["epoch 1/2"]
    assert "val_" not in lines["epoch 0/2"] + lines["epoch 2/2"]
    assert "last batch loss" in lines["epoch 0/2"]  # no metrics.csv row yet
    with open(tmp_path / "run" / "metrics.csv") as handle:  # the validated line is its row
        row = next(csv.DictReader(handle))
    assert row["epoch"] == "1"
    assert f"loss {float(row['train_loss']):.4f}, val_loss" in lines["epoch 1/2"]
    assert f"lr {float(row['lr']):.2e}" in lines["epoch 1/2"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["last_epoch"] == 2  # one validated, three trained


def test_progress_lines_inside_a_long_epoch(tiny_prepared, tmp_path, caplog):
    from dermaseg.train.progress_lines import ProgressLines

    with caplog.at_level("INFO"):
        train(tiny("train.max_epochs=1"), tiny_prepared, tmp_path / "run", progress=False,
              callbacks=[ProgressLines(every_s=0.0)])
    batches = [r.getMessage() for r in caplog.records if "batch " in r.getMessage()]
    assert batches == [f"epoch 0/0: batch {i}/{STEPS_PER_EPOCH}, batch loss " + m.split("loss ")[1]
                       for i, m in zip(range(1, STEPS_PER_EPOCH + 1), batches, strict=True)]
