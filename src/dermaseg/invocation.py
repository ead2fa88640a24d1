"""How to run `dermaseg` from where the user stands, for the commands we print for them to
run next: after `make demo` the virtual environment is not activated, and a bare `dermaseg`
is "command not found"."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def dermaseg_command() -> str:
    """`dermaseg` when that name on PATH is this installation's script; else that script's
    path (`.venv/bin/dermaseg`, relative when it is below the current folder); else
    `python -m dermaseg` with this interpreter."""
    folder = Path(sys.executable).parent
    script = folder / ("dermaseg.exe" if os.name == "nt" else "dermaseg")
    found = shutil.which("dermaseg")
    if found is not None and _same_file(Path(found), script):
        return "dermaseg"
    if script.is_file():
        return shlex.quote(_as_typed(script))
    return f"{shlex.quote(_as_typed(Path(sys.executable)))} -m dermaseg"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _as_typed(path: Path) -> str:
    """`path` as one would type it here: relative when below the current folder (with a
    folder in it: a bare name would be looked up on PATH)."""
    absolute = Path(os.path.abspath(path))
    try:
        relative = str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
    return relative if os.sep in relative else os.path.join(".", relative)
