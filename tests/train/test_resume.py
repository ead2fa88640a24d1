"""Resume after a crash: bit-identical weights, optimiser state and metrics."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from dermaseg.checkpoint import model_state_dict, read_checkpoint
from dermaseg.errors import UsageError
from dermaseg.train.runner import train
from helpers.training import (
    STEPS_PER_EPOCH,
    TIMING_COLUMNS,
    Interrupt,
    InterruptAt,
    full_run,
    read_rows,
    tiny,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def uninterrupted(tiny_prepared, tmp_path_factory):
    """The plateau-scheduler run without a crash."""
    return full_run(tiny_prepared, tmp_path_factory)[0]


def assert_same_run(full, resumed):
    a, b = read_checkpoint(full / "last.ckpt"), read_checkpoint(resumed / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    wa, wb = model_state_dict(a), model_state_dict(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(),
                      b["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    rows_a, rows_b = read_rows(full / "metrics.csv"), read_rows(resumed / "metrics.csv")
    strip = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows_a + rows_b]
    assert strip[:3] == strip[3:]


@pytest.fixture(scope="module")
def cosine_run(tiny_prepared, tmp_path_factory):
    """The uninterrupted run with the per-step cosine schedule (and a warm-up epoch)."""
    out = tmp_path_factory.mktemp("runs") / "cosine"
    train(tiny(*COSINE), tiny_prepared, out, progress=False)
    return out


COSINE = ["optim.scheduler=cosine", "optim.warmup_epochs=1"]


@pytest.mark.parametrize(("scheduler", "crash", "saved"), [
    ("plateau", InterruptAt(7), 6), ("plateau", InterruptAt(5), 4),
    ("plateau", InterruptAt(4, in_validation=True), 2), ("cosine", InterruptAt(7), 6)],
    ids=["mid-epoch", "epoch-boundary", "before-validation", "cosine-mid-epoch"])
def test_resume_after_crash_matches_uninterrupted_run(request, tiny_prepared, tmp_path, scheduler,
                                                      crash, saved):
    """Crash after step 7 (last.ckpt holds step 6: epoch 1, 2 of 4 batches), after step 5
    (last.ckpt from the end of epoch 0) or in epoch 0's validation (not from after its last
    batch: resumed from there, Lightning would skip that validation), resume: bit-identical
    weights, optimiser state and metrics. It holds because the batch order is a function of
    (seed, epoch), augmentation is seeded per (seed, epoch, image), the sampler skips the
    batches already trained on, and the RNG state (dropout) travels in the checkpoint. The
    cosine schedule counts its steps without building the loader before the restore."""
    extra = COSINE if scheduler == "cosine" else []
    full = request.getfixturevalue("cosine_run" if extra else "uninterrupted")
    out = tmp_path / "crashed"
    with pytest.raises(Interrupt):
        train(tiny(*extra), tiny_prepared, out, progress=False, callbacks=[crash])
    assert read_checkpoint(out / "last.ckpt")["global_step"] == saved
    train(tiny(*extra), tiny_prepared, out, resume=True, progress=False)
    assert_same_run(full, out)


@pytest.mark.parametrize("gather_on", ["loader", "device"])
def test_resume_with_augmentation_on_the_device_matches_uninterrupted_run(tiny_prepared, tmp_path,
                                                                          gather_on):
    """`data.augment_on=device` (the GPU default) draws each sample's parameters from its
    (seed, epoch, index) key too: a mid-epoch crash and resume gives the same weights, also
    with the split kept on the device (`data.gather_on=device`, the GPU default), where the
    loader yields indices alone."""
    device = tiny("data.augment_on=device", f"data.gather_on={gather_on}")
    full = tmp_path / "full"
    train(device, tiny_prepared, full, progress=False)
    out = tmp_path / "crashed"
    with pytest.raises(Interrupt):
        train(device, tiny_prepared, out, progress=False, callbacks=[InterruptAt(7)])
    train(device, tiny_prepared, out, resume=True, progress=False)
    assert_same_run(full, out)


ROBUST = ["data.augment.scale=0.3", "data.augment.hue=0.05", "data.augment.saturation=0.3",
          "data.augment.gamma=0.5", "data.augment.blur_p=0.5", "data.augment.noise=8",
          "data.augment.vignette_p=0.5", "data.augment.hair_p=0.5"]


def test_resume_with_the_robust_augmentation_matches_uninterrupted_run(tiny_prepared, tmp_path):
    """The steps for other clinics' dermoscopes (zoom, colour, blur, noise, vignette, hair)
    draw from the same per-(seed, epoch, index) generators: a mid-epoch crash and resume
    gives the same weights."""
    robust = tiny(*ROBUST)
    full = tmp_path / "full"
    train(robust, tiny_prepared, full, progress=False)
    out = tmp_path / "crashed"
    with pytest.raises(Interrupt):
        train(robust, tiny_prepared, out, progress=False, callbacks=[InterruptAt(7)])
    train(robust, tiny_prepared, out, resume=True, progress=False)
    assert_same_run(full, out)


def test_split_on_the_device_trains_the_same_weights(tiny_prepared, tmp_path):
    """`data.gather_on=device` is the same run as the loader path: same batches, same
    augmentation rounding, same dropout stream (the index loader draws nothing from the
    global RNG), so bit-identical weights."""
    runs = {}
    for gather_on in ("loader", "device"):
        out = tmp_path / gather_on
        train(tiny("data.augment_on=device", f"data.gather_on={gather_on}",
                   "train.max_epochs=1"), tiny_prepared, out, progress=False)
        runs[gather_on] = model_state_dict(read_checkpoint(out / "last.ckpt"))
    differ = [k for k in runs["loader"] if not torch.equal(runs["loader"][k], runs["device"][k])]
    assert not differ, differ[:5]


def test_resume_refuses_other_data_and_follows_a_moved_folder(tiny_prepared, tmp_path):
    """`--resume` with another --data trained on on it, best.ckpt having been chosen on the
    first data's val split."""
    out = tmp_path / "crashed"
    with pytest.raises(Interrupt):
        train(tiny(), tiny_prepared, out, progress=False, callbacks=[InterruptAt(3)])
    other = tmp_path / "other"
    shutil.copytree(tiny_prepared, other)
    manifest = json.loads((other / "manifest.json").read_text())
    next(item for item in manifest["items"] if item["split"] == "train")["split"] = "val"
    (other / "manifest.json").write_text(json.dumps(manifest))
    started = re.escape(str(tiny_prepared.absolute()))
    with pytest.raises(UsageError, match=f"started on {started}, whose items or splits differ"):
        train(tiny(), other, out, resume=True, progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_prepared, moved)
    summary = train(tiny(), moved, out, resume=True, progress=False)
    assert summary["epochs"] == 3

