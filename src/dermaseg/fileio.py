"""Safe file output (temp file + rename) and image reading with errors that name the file."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from dermaseg.errors import DermasegError
from dermaseg.image_checks import check_declared

# Decompression-bomb guard: ISIC's largest images are 6000x4000 (24 Mpx); allow 4x that.
MAX_PIXELS = 100_000_000
UMASK = os.umask(0)  # the process's file-creation mask: read, then set back
os.umask(UMASK)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow only warns between 1x and 2x its limit; `open_header` refuses those images itself.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# A damaged file is an error, never decoded with its missing part black (see also
# `declared_problem`: data too short for the declared pixels that Pillow does not notice).
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Temporary files of atomic writes: hidden, so dataset discovery skips them.
TEMP_PREFIX = ".dermaseg-"


def make_folder(path: str | os.PathLike) -> None:
    """Create the output folder `path` (and its parents) unless it exists.

    Raises:
        DermasegError: `path` is a file, or cannot be created.
    """
    folder = Path(path)
    shown = os.fsencode(folder).decode("utf-8", "backslashreplace")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DermasegError(
            f"{shown}: not a folder (cannot create the output folder there)"
        ) from None
    except OSError as exc:
        raise DermasegError(
            f"{shown}: cannot create the output folder ({exc.strerror or exc})"
        ) from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else remove it.

    The temporary name (TEMP_PREFIX + random + ".tmp") does not grow with the target's name, so a
    target whose name is near the 255-byte limit can still be written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise DermasegError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def shown_path(path: Path) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_output_files(out: Path, files: tuple[str, ...], what: str) -> None:
    """Raises DermasegError when `out` is not a folder or one of `files` in it is a folder.
    Creates nothing."""
    if out.exists() and not out.is_dir():
        raise DermasegError(f"{shown_path(out)}: not a folder (cannot write the {what} there)")
    for name in files:
        if (out / name).is_dir():
            raise DermasegError(f"{shown_path(out / name)}: is a folder (the {what} writes a file "
                                "there)")


@contextlib.contextmanager
def staged_outputs(out: Path, files: tuple[str, ...], what: str) -> Iterator[Path]:
    """A hidden folder inside `out` to write `files` into; when the block ends they are moved
    into `out` (each whole). On any failure `out` is left as it was (and removed again when
    this made it).

    Raises:
        DermasegError: `out` or a file in it is in the way (check_output_files), or a write
            fails (naming `out` and the `what` being written).
    """
    check_output_files(out, files, what)
    created = not out.exists()
    make_folder(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out))
        try:
            yield stage
            for name in files:
                os.replace(stage / name, out / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        if isinstance(exc, OSError):
            raise DermasegError(f"{shown_path(out)}: cannot write the {what} "
                                f"({exc.strerror or exc})") from exc
        raise


class UnsafeName(DermasegError):
    """A name (an item id, a file name) that cannot become one file name inside a folder."""


NAME_BYTES = 255  # the longest file name Linux, macOS and Windows file systems all take
_SEPARATORS = frozenset(filter(None, ("/", os.sep, os.altsep)))


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one plain file name inside a folder, else None: empty, "." or "..",
    a path separator (an absolute or relative path), a control character (a newline, a tab,
    NUL ...), a leading dot (a hidden file, skipped by every listing), or over NAME_BYTES.

    The one rule for every name that becomes a path: item ids, uploads, mask names."""
    if not isinstance(name, str) or not name:
        return "empty" if name == "" else f"not text but {type(name).__name__}"
    if name in (".", "..") or _SEPARATORS & set(name):
        return "a path, not a name: it would lead out of the folder"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return f"a control character ({bad!r}: a newline, tab or the like)"
    if name.startswith("."):
        return "starts with a dot (a hidden file, which listings skip)"
    try:
        size = len(os.fsencode(name))
    except UnicodeError:
        return "not encodable as a file name"
    if size > NAME_BYTES:
        return f"{size} bytes long; file names take at most {NAME_BYTES}"
    return None


def safe_child(folder: str | os.PathLike, name: str, origin: str) -> Path:
    """`folder / name` once `name` is checked to be one plain file name (name_problem).

    `origin` says where the name came from, for the error ("manifest.json: item id").

    Raises:
        UnsafeName: naming the name (escaped: a newline shows as \\n), why and its origin.
    """
    problem = name_problem(name)
    if problem is not None:
        raise UnsafeName(f"{origin} {name!r}: cannot be a file name: {problem}")
    return Path(folder) / name


def clean_name(name: str | None, fallback: str = "upload", limit: int = 100) -> str:
    """A name from outside (an upload's file name) made into a safe label: its last path
    part, every character but ASCII letters, digits and "._ -" made "_", no leading dot, at
    most `limit` characters; `fallback` when nothing is left. It passes name_problem."""
    base = re.split(r"[/\\]", str(name or ""))[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ -]", "_", base)[:limit].lstrip(".")
    return cleaned or fallback


def save_png_atomic(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> None:
    """Write a uint8 array (HxW or HxWx3) as PNG, atomically (zlib level 6: Pillow's default;
    1 is ~3x faster on smooth 8-bit maps for ~30 % more bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=compress_level)
    write_bytes_atomic(path, buffer.getvalue())


class ImageTooLarge(DermasegError):
    """An image with more pixels than Image.MAX_IMAGE_PIXELS (a possible decompression bomb)."""


def too_large(width: int | None = None, height: int | None = None) -> str:
    """Why an image is refused for its pixel count: the one wording (and limit) of every
    command and the service."""
    size = f"{width}x{height} is " if width and height else ""
    return f"image too large ({size}over the limit of {Image.MAX_IMAGE_PIXELS} pixels)"


def open_header(source, label: str, declared: bool = True) -> Image.Image:
    """Image.open (the header only, nothing decoded), refusing more than MAX_IMAGE_PIXELS
    and, when `declared`, what `check_declared` refuses (the service checks its own pixel
    limit first, then calls that itself).

    Pillow only warns between 1x and 2x its limit (that warning is silenced at import); here
    those images are refused too.

    Raises:
        ImageTooLarge, ImageRefused: naming `label`. Pillow's own errors (not an image ...)
            pass through.
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{label}: {too_large()}") from exc
    if limit and image.width * image.height > limit:
        raise ImageTooLarge(f"{label}: {too_large(image.width, image.height)}")
    if declared:
        check_declared(image, source, label)
    return image


def file_label(source, name: str | None = None) -> str:
    """The file name as shown in errors: a non-UTF-8 name with \\xNN escapes, never as lone
    surrogates."""
    if name is not None:
        return name
    if isinstance(source, bytes):
        return "image bytes"
    return os.fsencode(source).decode("utf-8", "backslashreplace")


EXIF_ORIENTATION = 0x0112


def note_first_frame(image: Image.Image, label: str) -> None:
    """Say on stderr when `image` holds several frames (a multi-page TIFF, an animated PNG,
    WebP or GIF): only the first is read. A JPEG's extra MPO pictures (previews) are not
    mentioned: its first picture is the photo."""
    if getattr(image, "is_animated", False) and image.format != "MPO":
        print(f"note: {label}: several frames (a multi-page or animated image); only the "
              "first is used", file=sys.stderr)


def draft_jpeg(image: Image.Image, size: int | None) -> None:
    """Ask a JPEG at least twice as large as `size` for a reduced (DCT-scaled) decode, never
    below the letterboxed size. `data prepare` and `predict` both decode this way
    (`decode_image`), so the network sees the same input in training and in use."""
    width, height = image.size
    if size is None or image.format != "JPEG" or max(width, height) < 2 * size:
        return
    scale = size / max(width, height)
    image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))


def decode_image(source, name: str | None = None, draft_size: int | None = None):
    """Open, decode (reduced for a large JPEG when `draft_size` is given) and EXIF-orient.

    Returns (image, (height, width) of the original as displayed): the image is smaller than
    that only after a reduced decode.

    Raises:
        DermasegError: naming the file when it is missing, empty, not an image, truncated,
            or larger than Image.MAX_IMAGE_PIXELS (ImageTooLarge).
    """
    label = file_label(source, name)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise DermasegError(f"{label}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        try:
            if not handle.read(1):
                raise DermasegError(f"{label}: empty file (0 bytes)")
            handle.seek(0)
            image = open_header(handle, label)
            note_first_frame(image, label)
            width, height = image.size
            draft_jpeg(image, draft_size)
            image.load()
            if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
                return image, (height, width)  # exif_transpose would only copy it
            decoded = image.size
            image = ImageOps.exif_transpose(image)
        except Image.UnidentifiedImageError as exc:
            raise DermasegError(f"{label}: not an image (unknown or damaged format)") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise DermasegError(f"{label}: not a readable image ({exc})") from exc
    if image.size != decoded:  # EXIF rotated by 90 or 270 degrees
        width, height = height, width
    return image, (height, width)


def open_image(source: str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
    """Open an image file (or bytes), apply EXIF orientation, and fully decode it.

    Raises:
        DermasegError: naming the file when it is missing, empty, not an image, truncated,
            or larger than Image.MAX_IMAGE_PIXELS (ImageTooLarge).
    """
    return decode_image(source, name)[0]


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode (L, P, RGBA, CMYK, I;16, ...) -> HxWx3 uint8 RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if data.max() > 255 else 255.0
        image = Image.fromarray((data / scale * 255).round().clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_rgb(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Read any supported image as HxWx3 uint8 RGB with EXIF orientation applied."""
    return to_rgb_array(open_image(source, name))


def read_rgb_reduced(source: str | os.PathLike | bytes, size: int, name: str | None = None):
    """(HxWx3 uint8 RGB, (height, width) of the original): a JPEG at least twice as large as
    `size` is decoded at reduced size (Pillow's draft, as `data prepare` does), about 5x faster
    than a full decode for a 6000x4000 image at 192-512 px; other images are decoded in full.
    Letterboxing the result with Letterbox.fit(height, width, size) gives the network input of
    `data prepare` exactly."""
    image, original = decode_image(source, name, draft_size=size)
    return to_rgb_array(image), original
