"""Preparing again into a prepared folder without losing it when the run is interrupted.

A first `data prepare` writes straight into OUT (until its manifest exists there is no dataset
to lose, and a killed run resumes from the arrays it wrote). Once OUT holds a manifest, a new
run writes every array it makes into OUT/.dermaseg-staging/ (images/, masks/, meta/): the
dataset in OUT stays whole, whatever happens to the run. At the end the switch:

1. the new manifest is written into the staging folder: from here on the new dataset wins;
2. the staged files are moved into OUT, then the staged manifest over OUT's;
3. the staging folder is removed.

A run killed during step 2 (milliseconds) leaves the staged manifest: the next `data prepare`
finishes the switch first, and reading the dataset meanwhile says so (`switch_pending`).
A run killed before step 1 leaves its staged arrays, which the next run reuses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from dermaseg.data.discover import display_path
from dermaseg.data.splits import MANIFEST
from dermaseg.errors import DermasegError
from dermaseg.fileio import TEMP_PREFIX, write_json_atomic

STAGING = f"{TEMP_PREFIX}staging"
ITEM_FOLDERS = ("images", "masks", "meta")


def work_folder(out: Path) -> Path:
    """Where this run writes its arrays: OUT itself while it holds no dataset, else its
    staging folder (left by an interrupted run, or new)."""
    if not (out / MANIFEST).is_file():
        shutil.rmtree(out / STAGING, ignore_errors=True)  # staged for a dataset now gone
        return out
    return out / STAGING


def switch_pending(out: Path) -> bool:
    """True when a `data prepare` decided to replace OUT's dataset and has not finished."""
    return (out / STAGING / MANIFEST).is_file()


def commit(out: Path, work: Path, manifest: dict) -> None:
    """Make `manifest` (whose new arrays are in `work`) OUT's dataset; see the module
    docstring.

    Raises:
        DermasegError: a manifest cannot be written (OUT is left as it was), or the staged
            files cannot be moved (finish_switch).
    """
    write_json_atomic(work / MANIFEST, manifest)
    if work != out:
        finish_switch(out)


def finish_switch(out: Path) -> None:
    """Complete a switch that was interrupted after its manifest was staged (else nothing)."""
    staged = out / STAGING
    if not switch_pending(out):
        return
    try:
        for folder in ITEM_FOLDERS:
            if not (staged / folder).is_dir():
                continue
            (out / folder).mkdir(exist_ok=True)
            for entry in os.scandir(staged / folder):
                if not entry.name.startswith("."):  # temporary files of killed writes
                    os.replace(entry.path, out / folder / entry.name)
        os.replace(staged / MANIFEST, out / MANIFEST)
    except OSError as exc:
        raise DermasegError(f"{display_path(out)}: cannot switch in the dataset prepared in "
                            f"{STAGING} ({exc.strerror or exc}); run `dermaseg data prepare` "
                            "again to finish") from exc
    with contextlib.suppress(OSError):
        shutil.rmtree(staged)
