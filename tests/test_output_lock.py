"""Two runs into one output folder (issue 18, item 4): while one dermaseg process writes
there, every other command writing into the same folder is refused, naming the folder and
the process; nothing of the second run lands there."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dermaseg.output_lock import LOCK_NAME
from helpers.badinputs import run_cli

# A second process holding an output folder's lock with the helper every command uses.
HOLDER = textwrap.dedent("""
    import sys
    from dermaseg.output_lock import output_lock
    with output_lock(sys.argv[1], "test run", shared=sys.argv[2] == "shared",
                     name=sys.argv[3]):
        print("locked", flush=True)
        sys.stdin.read()
""")


@contextlib.contextmanager
def held(folder: Path, shared: bool = False, name: str = LOCK_NAME):
    """Another process holds `folder`'s lock while the block runs; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder),
                               "shared" if shared else "alone", name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert not (folder / name).exists()  # the holder removed its lock file


def refused(output: str, folder: Path, pid: int | None) -> bool:
    who = f" (pid {pid})" if pid else ""
    return f"{folder}: another dermaseg process{who} is writing there" in output


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synth_dir) -> Path:
    from dermaseg.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("lock") / "prep"
    prepare_dataset(synth_dir, out, size=48, workers=1, progress=False)
    return out


def test_predict_evaluate_and_prepare_refuse_a_folder_another_process_writes(
        tmp_path, synth_dir, tiny_ckpt):
    out = tmp_path / "out"
    commands = [
        ("predict", tiny_ckpt, synth_dir / "synth_0001.jpg", "-o", out, "--quiet"),
        ("evaluate", tiny_ckpt, "--data", synth_dir, "-o", out, "--quiet"),
        ("data", "prepare", synth_dir, "-o", out, "--size", "32", "-j", "1"),
    ]
    with held(out) as pid:
        for command in commands:
            code, output = run_cli(*command)
            assert code == 1 and refused(output, out, pid), (command, output)
            assert "Traceback" not in output
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written


def test_train_refuses_a_run_folder_another_process_writes(tmp_path, prepared):
    out = tmp_path / "run"
    with held(out) as pid:
        code, output = run_cli("train", "-c", "cpu_small", "-d", prepared, "-o", out, "-q",
                               "-s", "train.max_epochs=1", "-s", "data.image_size=48")
        assert code == 1 and refused(output, out, pid), output
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_export_refuses_an_output_another_process_writes(tmp_path, tiny_ckpt):
    target = tmp_path / "m.onnx"
    with held(tmp_path, name=".m.onnx.lock") as pid:
        code, output = run_cli("export", tiny_ckpt, "-o", target, "--calib-count", "2")
        assert code == 1 and refused(output, tmp_path, pid), output
        assert not target.exists()
        # another file in the same folder is not this export's business
        code, output = run_cli("export", tiny_ckpt, "-o", tmp_path / "other.txt")
        assert code == 2 and "is named *.onnx" in output, output


def test_shards_share_the_folder_but_a_plain_run_does_not(tmp_path, synth_dir, tiny_ckpt):
    out = tmp_path / "out"
    with held(out, shared=True):  # shard 0/2 of a predict is running
        code, output = run_cli("predict", tiny_ckpt, synth_dir, "-o", out, "--shard", "1/2",
                               "--quiet")
        assert code == 0, output
        code, output = run_cli("predict", tiny_ckpt, synth_dir, "-o", out, "--quiet")
        assert code == 1 and refused(output, out, None), output
    assert len(list(out.glob("*_segmentation.png"))) == 6  # shard 1/2 of 12 images


def test_two_predicts_at_once_never_mix_their_masks(tmp_path, synth_dir, tiny_ckpt):
    """The reported race: two `predict` processes with different settings into one -o at
    the same moment both succeeded and left masks of both settings (3 of 10 races)."""
    out = tmp_path / "out"
    runs = [subprocess.Popen([sys.executable, "-m", "dermaseg", "predict", str(tiny_ckpt),
                              str(synth_dir), "-o", str(out), "--quiet", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for extra in ([], ["--keep-largest"])]
    results = [(run.wait(timeout=300), run.stdout.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results  # exactly one wrote its masks
    loser = next(output for code, output in results if code != 0)
    assert ("another dermaseg process" in loser  # refused while the other ran
            or "predicted with other settings" in loser), loser  # or after it had finished
    assert "Traceback" not in loser
    assert len(list(out.glob("*_segmentation.png"))) == 12
    assert not (out / LOCK_NAME).exists()
