"""The `dermaseg` command we print for the user to run next works from where they stand:
`make demo` does not activate the virtual environment, so a bare `dermaseg` may be another
program's, or none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dermaseg import __version__
from dermaseg.invocation import dermaseg_command

BIN = Path(sys.executable).parent
SCRIPT = BIN / "dermaseg"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="no dermaseg script beside python")


def runs(command: str, cwd: Path, path: str) -> str:
    """`COMMAND --version` in a shell at `cwd` with this PATH: its output."""
    done = subprocess.run(f"{command} --version", shell=True, cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PATH": path}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_the_environment_on_path_the_script_is_named(tmp_path, monkeypatch):
    other = tmp_path / "bin"
    other.mkdir()
    (other / "dermaseg").write_text("#!/bin/sh\necho another program\n")
    (other / "dermaseg").chmod(0o755)
    path = f"{other}{os.pathsep}/usr/bin{os.pathsep}/bin"
    monkeypatch.setenv("PATH", path)
    monkeypatch.chdir(BIN.parent.parent)  # the folder holding .venv: the repository
    command = dermaseg_command()
    assert command == os.path.relpath(SCRIPT)  # e.g. .venv/bin/dermaseg
    assert runs(command, BIN.parent.parent, path).strip() == f"dermaseg {__version__}"
    monkeypatch.chdir(tmp_path)  # outside it: the whole path
    assert dermaseg_command() == str(SCRIPT)
    assert runs(dermaseg_command(), tmp_path, path).strip() == f"dermaseg {__version__}"


def test_with_the_environment_on_path_it_is_plain_dermaseg(tmp_path, monkeypatch):
    path = f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"
    monkeypatch.setenv("PATH", path)
    assert dermaseg_command() == "dermaseg"
    assert runs("dermaseg", tmp_path, path).strip() == f"dermaseg {__version__}"
