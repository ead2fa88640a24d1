"""Fetch the official ISIC 2016/2017/2018 Task 1 archives, unpack them safely, then check them.

Transfers go to `NAME.zip.part` and resume with an HTTP Range request after a break (within a run
and across runs); the size is checked against Content-Length and, where a SHA-256 is known, the
content against it (with neither, it must be a whole zip archive); only then is the file renamed
to `NAME.zip`. A `NAME.zip` already in the folder (downloaded by hand) is used as is; one that
turns out damaged is moved aside to `NAME.zip.bad` so that the next run fetches it afresh.
Unpacking (`dermaseg.data.unzip`) refuses members that would land outside the output folder and
writes nothing unless every member is whole. Only the standard library's urllib is used.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from dermaseg.data.check import CheckReport, check_dataset
from dermaseg.data.unzip import BadArchive, safe_extract
from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import make_folder, write_bytes_atomic
from dermaseg.progress import progress as progress_bar

URL_BASE = "https://isic-challenge-data.s3.amazonaws.com"
MIRROR_BASE = "https://isic-archive.s3.amazonaws.com/challenges"
CHUNK = 1 << 20
SPLITS = ("training", "validation", "test")


@dataclass(frozen=True)
class Archive:
    """One published archive: `<base>/<folder>/<name>`; sha256 where a checksum is known."""

    folder: str
    name: str
    split: str
    sha256: str | None = None


# SHA-256 of the 2018 archives as verified by torch-em's ISIC loader (torch_em/data/datasets);
# ISIC publishes no checksums for 2016 and 2017, so those are checked by size only.
ARCHIVES: dict[str, list[Archive]] = {
    "isic2018": [
        Archive(
            "2018",
            "ISIC2018_Task1-2_Training_Input.zip",
            "training",
            "80f98572347a2d7a376227fa9eb2e4f7459d317cb619865b8b9910c81446675f",
        ),
        Archive(
            "2018",
            "ISIC2018_Task1_Training_GroundTruth.zip",
            "training",
            "99f8b2bb3c4d6af483362010715f7e7d5d122d9f6c02cac0e0d15bef77c7604c",
        ),
        Archive(
            "2018",
            "ISIC2018_Task1-2_Validation_Input.zip",
            "validation",
            "0ea920fcfe512d12a6e620b50b50233c059f67b10146e1479c82be58ff15a797",
        ),
        Archive(
            "2018",
            "ISIC2018_Task1_Validation_GroundTruth.zip",
            "validation",
            "f6911e9c0a64e6d687dd3ca466ca927dd5e82145cb2163b7a1e5b37d7a716285",
        ),
        Archive(
            "2018",
            "ISIC2018_Task1-2_Test_Input.zip",
            "test",
            "e59ae1f69f4ed16f09db2cb1d76c2a828487b63d28f6ab85997f5616869b127d",
        ),
        Archive(
            "2018",
            "ISIC2018_Task1_Test_GroundTruth.zip",
            "test",
            "2e8f6edce454a5bdee52485e39f92bd6eddf357e81f39018d05512175238ef82",
        ),
    ],
    "isic2017": [
        Archive("2017", "ISIC-2017_Training_Data.zip", "training"),
        Archive("2017", "ISIC-2017_Training_Part1_GroundTruth.zip", "training"),
        Archive("2017", "ISIC-2017_Validation_Data.zip", "validation"),
        Archive("2017", "ISIC-2017_Validation_Part1_GroundTruth.zip", "validation"),
        Archive("2017", "ISIC-2017_Test_v2_Data.zip", "test"),
        Archive("2017", "ISIC-2017_Test_v2_Part1_GroundTruth.zip", "test"),
    ],
    "isic2016": [
        Archive("2016", "ISBI2016_ISIC_Part1_Training_Data.zip", "training"),
        Archive("2016", "ISBI2016_ISIC_Part1_Training_GroundTruth.zip", "training"),
        Archive("2016", "ISBI2016_ISIC_Part1_Test_Data.zip", "test"),
        Archive("2016", "ISBI2016_ISIC_Part1_Test_GroundTruth.zip", "test"),
    ],
}


class Unreachable(DermasegError):
    """The server could not be reached at all (no network, DNS failure, refused)."""


class _Broken(Exception):
    """A transfer started but stopped early; the `.part` file keeps what arrived."""


class _RangeRefused(Exception):
    """HTTP 416: the requested offset is at or past the end; `total` is the server's size."""

    def __init__(self, total: int | None):
        super().__init__(total)
        self.total = total


def archive_url(archive: Archive, url_base: str = URL_BASE) -> str:
    return f"{url_base.rstrip('/')}/{archive.folder}/{archive.name}"


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    match = re.match(r"bytes (\d+|\*)(?:-\d+)?/(\d+|\*)", header or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (None if start == "*" else int(start)), (None if total == "*" else int(total))


def _open(url: str, offset: int, timeout: float):
    """Open `url` asking for bytes from `offset`.

    Raises:
        _RangeRefused: HTTP 416 to a Range request.
        Unreachable, DermasegError: no connection, or another HTTP error status.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)  # noqa: S310
    except HTTPError as exc:
        if exc.code == 416 and offset:
            raise _RangeRefused(_content_range(exc.headers.get("Content-Range"))[1]) from exc
        raise DermasegError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from exc
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach {url} ({reason})") from exc


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> int | None:
    """Append the rest of `url` to `part` (or restart it if the server ignores Range or has a
    smaller file); returns the file's size when the server gave it, else None.

    Raises:
        _Broken: the connection stopped before Content-Length bytes arrived.
        Unreachable, DermasegError: no connection, or an HTTP error status.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except _RangeRefused as refused:
        if refused.total == offset:
            return offset  # the .part is already complete
        part.unlink()  # longer than the file on the server: start again
        offset, response = 0, _open(url, 0, timeout)
    with response:
        start = (
            _content_range(response.headers.get("Content-Range"))[0]
            if response.status == 206
            else 0
        )
        if start not in (0, offset):
            raise DermasegError(f"{url}: the server resumed at byte {start}, not {offset}")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        make_folder(part.parent)
        _receive(response, part, start, total, progress)
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Broken(f"got {size} of {total} bytes")
    return total


def _receive(response, part: Path, start: int, total: int | None, progress: bool) -> None:
    """Write the body of `response` to `part` from byte `start`; _Broken if it stops early."""
    bar = progress_bar(total=total, initial=start, desc=Path(part.stem).name,
                       byte_units=True, enabled=progress)
    with bar, open(part, "ab" if start else "wb", buffering=0) as handle:  # errors at write
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Broken(f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                return
            try:
                handle.write(chunk)
            except OSError as exc:  # the disk, not the network: retrying cannot help
                raise DermasegError(f"{part}: cannot write ({exc.strerror or exc}); free some "
                                    "space (or choose another -o), then run the same command "
                                    "again: it resumes from what is there") from exc
            bar.update(len(chunk))


def _check_unsized_zip(url: str, part: Path) -> None:
    """A zip of unknown size and no checksum is accepted only once it reads as a whole zip.

    Raises:
        _Broken: it starts like a zip but is cut short (the server closed early).
        DermasegError: it is not a zip at all (moved aside to NAME.bad).
    """
    if zipfile.is_zipfile(part):
        return
    with open(part, "rb") as handle:
        if handle.read(2) == b"PK":
            raise _Broken(f"got {part.stat().st_size} bytes of unknown size, not a whole zip")
    bad = part.with_name(part.name.removesuffix(".part") + ".bad")
    os.replace(part, bad)
    raise DermasegError(f"{url}: the server sent something that is not a zip; kept as {bad}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` unless it is already there, resuming breaks with HTTP Range.

    Raises:
        Unreachable: no connection to the server.
        DermasegError: HTTP error, transfer still broken after `retries` resumes (the `.part`
            file stays: running again resumes it), or a checksum mismatch. The folder of `dest`
            is created only once the server answers.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            total = _transfer(url, part, timeout, progress)
            if total is None and sha256 is None and dest.suffix == ".zip":
                _check_unsized_zip(url, part)
            break
        except _Broken as exc:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DermasegError(
                    f"{url}: transfer broke ({exc}); {kept} bytes kept in {part}, "
                    "run the same command again to resume"
                ) from exc
    if sha256 is not None and (actual := _sha256(part)) != sha256:
        bad = part.with_name(dest.name + ".bad")
        os.replace(part, bad)
        raise DermasegError(
            f"{url}: SHA-256 {actual} differs from the published {sha256}; kept as {bad}"
        )
    os.replace(part, dest)
    return dest


def _manual_help(archives: list[Archive], url_base: str, out: Path) -> str:
    urls = "\n".join(f"  {archive_url(a, url_base)}" for a in archives)
    return (
        f"\nDownload these files by hand on a machine with network access "
        f"(or from the mirror {MIRROR_BASE}/<year>/...):\n{urls}\n"
        f"put them in {out}/ and run the same command again: it unpacks and checks them "
        "without the network."
    )


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)
    except ValueError:  # unbalanced [ ], a port that is not a number or out of range
        return False


def _check_request(dataset: str, splits: tuple[str, ...], url_base: str, timeout: float) -> None:
    """Raises UsageError for an unknown dataset or split, a bad URL or timeout."""
    if dataset not in ARCHIVES:
        raise UsageError(f"unknown dataset {dataset!r}; choose from {', '.join(ARCHIVES)}")
    if unknown := set(splits) - set(SPLITS):
        raise UsageError(f"unknown split {sorted(unknown)}; choose from {', '.join(SPLITS)}")
    available = [s for s in SPLITS if any(a.split == s for a in ARCHIVES[dataset])]
    if missing := [s for s in SPLITS if s in splits and s not in available]:
        raise UsageError(f"{dataset} has no {' or '.join(missing)} split "
                         f"(available: {', '.join(available)})")
    if not _is_http_url(url_base):
        raise UsageError(f"--url-base {url_base!r}: not an http(s) URL")
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout}")


def _unpack(archive: Path, out: Path, progress: bool) -> None:
    """safe_extract, moving a damaged archive aside so that the next run fetches it afresh."""
    try:
        safe_extract(archive, out, progress=progress)
    except BadArchive as exc:
        bad = archive.with_name(archive.name + ".bad")
        os.replace(archive, bad)
        raise DermasegError(f"{exc}; moved to {bad}; run again to download it afresh") from exc


def download_dataset(
    dataset: str,
    out: str | os.PathLike,
    url_base: str = URL_BASE,
    splits: tuple[str, ...] | None = None,
    timeout: float = 10.0,
    verify_checksum: bool = True,
    progress: bool = True,
) -> CheckReport:
    """Fetch, unpack and check the Task 1 archives of `dataset` ("isic2016/2017/2018"), of the
    given splits (None or empty: every split the dataset has).

    `out` is created only once the server answers: a failed run leaves no empty folder.

    Raises:
        UsageError: unknown dataset or split, a split the dataset lacks, a URL that is not
            http(s), a timeout that is not positive.
        DermasegError: `out` is a file, no network (the message lists the files to fetch by
            hand), HTTP or transfer failure, checksum mismatch, unsafe or corrupt archive.
    """
    _check_request(dataset, splits or (), url_base, timeout)
    archives = [a for a in ARCHIVES[dataset] if not splits or a.split in splits]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DermasegError(f"{out}: not a folder (cannot create the output folder there)")
    for archive in archives:
        url = archive_url(archive, url_base)
        sha = archive.sha256 if verify_checksum else None
        if not (out / archive.name).exists():  # fetched anew: unpacked anew
            (out / f".{archive.name}.unpacked").unlink(missing_ok=True)
        try:
            fetch(url, out / archive.name, sha, timeout=timeout, progress=progress)
        except Unreachable as exc:
            raise Unreachable(str(exc) + _manual_help(archives, url_base, out)) from exc
    for archive in archives:
        marker = out / f".{archive.name}.unpacked"
        if not marker.exists():
            _unpack(out / archive.name, out, progress)
            write_bytes_atomic(marker, b"unpacked\n")
    return check_dataset(out, progress=progress)
