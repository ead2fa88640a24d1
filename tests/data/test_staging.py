"""An interrupted re-prepare (issue 18, item 5): preparing at another size into a prepared
folder and killing the run left a manifest at the old size with arrays of both sizes: the
old dataset was gone. The new arrays are now staged and switched in at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dermaseg.data.dataset import PreparedDataset
from dermaseg.data.manifest import read_manifest
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.staging import STAGING, finish_switch
from dermaseg.data.synth import SynthOptions, synth_dataset


def _slow_pairs(raw: Path, count: int = 3) -> None:
    """Pairs sorted after the synth ones whose 24 Mpx masks take a while to read: a window
    in which a run at another size has written some arrays and not its manifest."""
    for index in range(count):
        image = Image.new("RGB", (6000, 4000), (60 + 40 * index, 90, 120))
        image.save(raw / f"zz_big_{index}.jpg", quality=50)
        mask = Image.new("L", (6000, 4000), 0)
        mask.paste(255, (2000, 1000, 4000, 3000))
        mask.save(raw / f"zz_big_{index}_segmentation.png", compress_level=1)


def _loads_whole(prep: Path, size: int) -> int:
    """Every item of the prepared folder read at `size` (raises if any is missing or of
    another size); returns the number of items."""
    assert read_manifest(prep)["size"] == size
    dataset = PreparedDataset(prep, "all", cache=False)
    for index in range(len(dataset)):
        image, mask = dataset.arrays(index)
        assert image.shape == (size, size, 3) and mask.shape == (size, size)
    return len(dataset)


def _items_done_since(prep: Path, moment: int) -> list[Path]:
    """The per-item records (written after an item's arrays) newer than `moment`."""
    return [p for p in prep.rglob("meta/*.json") if p.stat().st_mtime_ns > moment]


def test_a_killed_prepare_at_another_size_leaves_the_old_dataset_whole(tmp_path):
    raw, prep = tmp_path / "raw", tmp_path / "prep"
    synth_dataset(8, raw, seed=5, options=SynthOptions(min_side=60, max_side=90),
                  progress=False)
    _slow_pairs(raw)
    prepare_dataset(raw, prep, size=32, workers=1, progress=False)
    items = _loads_whole(prep, 32)
    started = time.time_ns()
    run = subprocess.Popen([sys.executable, "-m", "dermaseg", "data", "prepare", str(raw),
                            "-o", str(prep), "--size", "40", "-j", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not _items_done_since(prep, started) and run.poll() is None:
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert _loads_whole(prep, 32) == items  # the old dataset, every array at the old size
    manifest = prepare_dataset(raw, prep, size=40, workers=1, progress=False)
    assert manifest["run"]["reused"] >= 1  # the arrays staged before the kill
    assert _loads_whole(prep, 40) == items and not (prep / STAGING).exists()


def test_a_switch_cut_short_is_finished_by_the_next_run(tmp_path):
    raw, prep = tmp_path / "raw", tmp_path / "prep"
    synth_dataset(4, raw, seed=6, options=SynthOptions(min_side=60, max_side=90),
                  progress=False)
    prepare_dataset(raw, prep, size=32, val=0.25, test=0.25, workers=1, progress=False)
    new = prepare_dataset(raw, tmp_path / "other", size=40, val=0.25, test=0.25, workers=1,
                          progress=False)
    # the state a kill leaves between "manifest staged" and "files moved"
    staged = prep / STAGING
    for folder in ("images", "masks"):
        (staged / folder).mkdir(parents=True)
        for array in (tmp_path / "other" / folder).glob("*.npy"):
            array.rename(staged / folder / array.name)
    (staged / "manifest.json").write_text(json.dumps(new))
    try:
        read_manifest(prep)
        raise AssertionError("a half-switched dataset was read")
    except Exception as exc:  # noqa: BLE001 - the message is what matters
        assert "stopped while replacing this dataset; run it again" in str(exc)
    finish_switch(prep)
    assert _loads_whole(prep, 40) == 4 and not staged.exists()
    assert np.load(next((prep / "images").glob("*.npy"))).shape == (40, 40, 3)
