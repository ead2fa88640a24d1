"""Unpack a zip archive safely: no member outside the output folder, nothing half-written."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dermaseg.errors import DermasegError
from dermaseg.fileio import TEMP_PREFIX, make_folder
from dermaseg.progress import progress as progress_bar

CHUNK = 1 << 20
STAGING_SUFFIX = ".unpack"


class BadArchive(DermasegError):
    """The archive is damaged (not a zip, or a corrupt member): fetching it again may help."""


def _check_members(archive: Path, members: list[zipfile.ZipInfo], out: Path) -> None:
    """Raises DermasegError if any member would be written outside `out`."""
    root = out.resolve()
    for member in members:
        name = member.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        target = (root / name).resolve()
        if name.startswith(("/", "\\")) or ".." in parts or not target.is_relative_to(root):
            raise DermasegError(
                f"{archive}: member {name!r} would be written outside {out}; refusing to unpack"
            )


def _unpack_member(zipped: zipfile.ZipFile, name: str, staging: Path, archive: Path) -> None:
    """Write member `name` below `staging`, naming the member when it is damaged."""
    target = staging / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipped.open(name) as source, open(target, "wb") as handle:
            shutil.copyfileobj(source, handle, CHUNK)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        reason = re.sub(r" for file .*$", "", str(exc)) or type(exc).__name__
        raise BadArchive(f"{archive}: member {name!r} is corrupt ({reason})") from exc
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encrypted
        raise DermasegError(f"{archive}: member {name!r} cannot be unpacked ({exc})") from exc
    except OSError as exc:
        raise DermasegError(f"{target}: cannot write ({exc.strerror or exc})") from exc


def _move_into(staging: Path, out: Path, names: list[str]) -> None:
    try:
        for name in names:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
    except OSError as exc:
        raise DermasegError(f"{out}: cannot write ({exc.strerror or exc})") from exc


def safe_extract(archive: str | os.PathLike, out: str | os.PathLike, progress: bool = True) -> int:
    """Unpack a zip into `out`; returns the number of files.

    Members are unpacked into a hidden folder inside `out`, then moved into place only when all
    of them were read whole: a damaged archive leaves nothing behind. Such folders left by an
    interrupted run are removed first.

    Raises:
        BadArchive: not a valid zip, or a corrupt member (named).
        DermasegError: a member escaping `out` (nothing is written then), not enough disk
            space, or `out` cannot be written.
    """
    archive, out = Path(archive), Path(out)
    make_folder(out)
    for stale in out.glob(f"{TEMP_PREFIX}*{STAGING_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            _check_members(archive, members, out)
            needed = sum(m.file_size for m in members)
            if needed > shutil.disk_usage(out).free:
                raise DermasegError(f"{archive}: needs {needed} bytes, {out} has less free space")
            names = list(dict.fromkeys(m.filename for m in members if not m.is_dir()))
            staging = Path(tempfile.mkdtemp(STAGING_SUFFIX, TEMP_PREFIX, out))
            try:
                for name in progress_bar(names, desc=f"unpack {archive.name}", unit="file",
                                         enabled=progress):
                    _unpack_member(zipped, name, staging, archive)
                _move_into(staging, out, names)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return len(names)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise BadArchive(f"{archive}: not a valid zip archive ({exc})") from exc
    except OSError as exc:
        raise DermasegError(f"{archive}: cannot unpack ({exc.strerror or exc})") from exc
