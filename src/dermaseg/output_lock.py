"""One process at a time writes into an output folder: an exclusive lock on a file inside it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dermaseg.errors import DermasegError
from dermaseg.fileio import UMASK, make_folder, shown_path

LOCK_NAME = ".dermaseg.lock"  # hidden: listings and dataset discovery skip it


class FolderBusy(DermasegError):
    """Another dermaseg process holds the lock on an output folder."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str, *, shared: bool = False,
                name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive lock (fcntl.flock on `folder/name`) while a run writes into `folder`,
    so that a second run into the same folder is refused instead of mixing its files in.
    `shared`: several cooperating processes (predict's shards) may hold it together, but no
    exclusive holder. The folder is created; it is removed again at the end when this made
    it and nothing else was left in it. On a file system without locks the run goes unlocked.

    Raises:
        FolderBusy: another process holds the lock, naming `folder` (and its process id).
        DermasegError: `folder` is a file or cannot be created or written.
    """
    folder = Path(folder)
    created = not folder.exists()
    make_folder(folder)
    lock = folder / name
    handle = _acquire(lock, shared, what)
    try:
        yield folder
    finally:
        _release(handle, lock, shared)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(lock: Path, shared: bool, what: str) -> int | None:
    """An open descriptor of `lock` holding the flock, or None where flock is unsupported."""
    folder = shown_path(lock.parent)
    while True:
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~UMASK)
        except OSError as exc:
            raise DermasegError(f"{folder}: cannot write the {what} there "
                                f"({exc.strerror or exc})") from exc
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip()
            os.close(handle)
            raise FolderBusy(
                f"{folder}: another dermaseg process{f' ({holder})' if holder else ''} is "
                f"writing there; wait for it to finish, or write the {what} to another "
                "folder") from None
        except OSError:  # no flock on this file system (some network shares)
            os.close(handle)
            return None
        # a holder that finished removed the file after we opened it: lock the new one
        if _same_file(handle, lock):
            if not shared:
                os.ftruncate(handle, 0)
                os.pwrite(handle, f"pid {os.getpid()}".encode(), 0)
            return handle
        os.close(handle)


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle), os.stat(path))
    except FileNotFoundError:
        return False


def _release(handle: int | None, lock: Path, shared: bool) -> None:
    """Remove the lock file (while still holding it exclusively), then let go."""
    if handle is None:
        return
    try:
        if shared:  # the last of the sharing processes removes it
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    except OSError:
        pass
    finally:
        os.close(handle)
