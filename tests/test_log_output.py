"""Output piped to a file (a log, a batch job): progress as a few whole lines, never the
carriage-return redraws of a bar; dermaseg's own warnings as one line without a source path.
The commands run as subprocesses with their output in a pipe, as in a log."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from dermaseg.progress import LineProgress, progress
from helpers.training import TINY


def dermaseg(*args, cwd: Path | None = None) -> str:
    """`dermaseg ARGS` with stdout and stderr in a pipe: the output, checked for exit 0."""
    done = subprocess.run([sys.executable, "-m", "dermaseg", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def progress_lines(output: str, desc: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{desc}: ")]


def test_a_pipe_gets_lines_a_terminal_a_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress(total=3, desc="x", stream=Terminal()), tqdm)
    log = io.StringIO()
    with progress(total=1000, desc="checking", unit="pair", stream=log) as bar:
        for _ in range(1000):
            bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[0] == "checking: 0/1000 pairs"
    assert lines[-1].startswith("checking: 1000/1000 pairs in ") and len(lines) <= 12
    nothing = io.StringIO()
    with progress(total=0, desc="predict", stream=nothing):
        pass  # every image already done: not a word
    assert nothing.getvalue() == ""


def test_lines_come_at_each_tenth_then_at_the_end():
    log = io.StringIO()
    for _ in LineProgress(range(25), desc="evaluate", unit="image", stream=log, min_gap_s=0):
        pass
    lines = log.getvalue().splitlines()
    shares = [line.split("(")[1].split(" %")[0] for line in lines[1:-1]]
    assert shares == ["12", "20", "32", "40", "52", "60", "72", "80", "92"]
    assert lines[-1].startswith("evaluate: 25/25 images in ")
    stopped = io.StringIO()
    bar = LineProgress(desc="download", total=4 << 20, byte_units=True, stream=stopped)
    bar.update(1 << 20)
    bar.close()
    assert stopped.getvalue().splitlines()[-1].startswith("download: 1.0 MiB of 4.0 MiB in ")
    assert stopped.getvalue().rstrip().endswith("(stopped)")


def test_data_and_evaluate_commands_write_clean_logs(tmp_path):
    raw, prep = tmp_path / "raw", tmp_path / "prep"
    output = dermaseg("data", "synth", "-n", "40", "-o", raw, "--min-side", "40",
                      "--max-side", "60")
    output += dermaseg("data", "check", raw, "-j", "1")
    output += dermaseg("data", "prepare", raw, "-o", prep, "--size", "32", "-j", "1")
    output += dermaseg("evaluate", "--pred", raw, "--truth", raw, "-o", tmp_path / "eval")
    assert "\r" not in output
    for desc, unit in (("synth", "images"), ("checking", "pairs"), ("preparing", "pairs"),
                       ("evaluate", "images")):
        lines = progress_lines(output, desc)
        assert 2 <= len(lines) <= 12, output
        assert lines[0] == f"{desc}: 0/40 {unit}" and f"40/40 {unit} in " in lines[-1]


def test_int8_calibration_reports_in_lines(capsys):
    from dermaseg.config import Config
    from dermaseg.export.int8 import ImageCalibrationReader
    from dermaseg.model_meta import ModelMeta

    meta = ModelMeta.from_config(Config().updated({"data.image_size": 32}))
    images = [np.full((40, 50, 3), k, dtype=np.uint8) for k in range(27)]
    reader = ImageCalibrationReader(images, meta, progress=True)
    while reader.get_next() is not None:
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = progress_lines(err, "calibrate")
    assert lines[0] == "calibrate: 0/27 images" and "27/27 images in " in lines[-1]
    assert len(lines) <= 12


def test_warnings_of_ours_are_formatted_as_one_line(monkeypatch):
    import dermaseg.train.datamodule as datamodule
    from dermaseg.cli import one_line_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after
    one_line_warnings()
    one_line_warnings()  # main() again in the same process: installed once
    # what Python's warnings.showwarning writes (pytest records warnings instead)
    ours = warnings.formatwarning(UserWarning("prep/: prepared at 48 px"), UserWarning,
                                  datamodule.__file__, 212)
    assert ours == "warning: prep/: prepared at 48 px\n"
    theirs = warnings.formatwarning(UserWarning("theirs"), UserWarning, np.__file__, 7)
    assert theirs.startswith(f"{np.__file__}:7: UserWarning: theirs")


@pytest.mark.slow
def test_a_warning_of_ours_is_one_line_without_a_source_path(tiny_prepared, tmp_path):
    """A recipe larger than the prepared images (upscaled): a note of one line, not Python's
    `.../datamodule.py:212: UserWarning:` and the source line under it."""
    overrides = [arg for item in TINY for arg in ("--set", item)]
    output = dermaseg("train", "--config", "cpu_small", *overrides, "--set",
                      "data.image_size=64", "--set", "train.max_epochs=1", "--data",
                      tiny_prepared, "-o", tmp_path / "run")
    line = next(line for line in output.splitlines() if "below data.image_size 64" in line)
    assert line.startswith(f"warning: {tiny_prepared}: prepared at 48 px")
    assert "UserWarning" not in output and ".py:" not in output and "\r" not in output
