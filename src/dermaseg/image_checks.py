"""Images refused before decoding: what a header declares against the data that follows.

Pillow decodes a JPEG or PNG whose data stops early with the missing part black or grey and
no error; a 69-byte PNG can declare 1 x 40,000,000 pixels. `declared_problem` finds such files
from the header and the compressed data alone, so that `data check`, `predict`, `evaluate`
and the service refuse them before paying for a decode.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zlib
from collections.abc import Iterator

from PIL import Image

from dermaseg.errors import DermasegError


def check_declared(image: Image.Image, source, label: str) -> None:
    """Raises ImageRefused, naming `label` and closing `image`, for what `declared_problem`
    finds (absurd proportions, too little data for the declared pixels)."""
    problem = declared_problem(image, source)
    if problem is not None:
        image.close()
        raise ImageRefused(f"{label}: {problem}")


class ImageRefused(DermasegError):
    """An image refused before decoding: absurd proportions, or too little data for the pixels
    its header declares (`declared_problem`)."""


# A dermoscopy photograph is about 4:3; a 1 x 40,000,000 header (a 69-byte PNG) would cost a
# 40-megapixel decode, letterbox and mask for almost no data.
MAX_ASPECT = 50
# PNG rows are checked exactly (their zlib stream inflated) when they declare more than this
# many bytes per byte of data: photographs (about 2:1) are not inflated twice, and whatever
# escapes the check costs at most this much per byte received.
PNG_CHECKED_RATIO = 8
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by the IHDR colour type
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # the interlace passes: first column, first row, column step, row step


def declared_problem(image: Image.Image, source) -> str | None:
    """Why an image opened by Image.open (nothing decoded yet) must not be decoded, else None:
    one side over MAX_ASPECT times the other, or a JPEG or PNG whose data cannot hold the
    pixels its header declares (a truncated or crafted file, which Pillow decodes with the
    missing part black and no error).

    `source` is what was opened: a path, or a seekable binary file (its position is kept).
    A JPEG needs at least one bit per 8x8 block (a Huffman code is never shorter); a PNG's
    rows must all be in its zlib stream (inflated only when suspiciously compressible: see
    PNG_CHECKED_RATIO). Other formats' decoders refuse short data themselves.
    """
    width, height = image.size
    if min(width, height) > 0 and max(width, height) > MAX_ASPECT * min(width, height):
        return (f"{width}x{height} pixels: one side is over {MAX_ASPECT} times the other, not "
                "a photograph (a damaged or crafted header); refused before decoding")
    if image.format not in ("JPEG", "MPO", "PNG"):
        return None
    with _rewound(source) as handle:
        if image.format == "PNG":
            return _png_problem(handle)
        nbytes = handle.seek(0, os.SEEK_END)
    least = math.ceil(width / 8) * math.ceil(height / 8) // 8
    if nbytes < least:
        return (f"{nbytes} bytes cannot hold a {width}x{height} JPEG (at least {least}): "
                "truncated or damaged image data; refused before decoding")
    return None


@contextlib.contextmanager
def _rewound(source) -> Iterator:
    """`source` as a binary file: a path opened, or a file whose position is restored."""
    if not hasattr(source, "read"):
        with open(source, "rb") as handle:
            yield handle
        return
    position = source.tell()
    try:
        yield source
    finally:
        source.seek(position)


def _png_problem(handle) -> str | None:
    """A PNG whose zlib stream (its IDAT chunks) does not inflate to every declared row."""
    handle.seek(16)
    try:
        width, height, depth, colour, interlace = struct.unpack(">IIBBxxB", handle.read(13))
    except struct.error:
        return None  # Pillow opened it; its decoder reports what is wrong
    bits = depth * PNG_CHANNELS.get(colour, 1)
    need = _png_data_size(width, height, bits, interlace == 1)
    spans = _idat_spans(handle)
    stored = sum(length for _, length in spans)
    if need <= PNG_CHECKED_RATIO * stored:
        return None
    got = _inflated_size(handle, spans, need)
    if got is None or got >= need:
        return None
    return (f"its {width}x{height} pixels need {need} bytes of rows, its {stored} bytes of "
            f"image data hold {got}: truncated or damaged image data; refused before decoding")


def _png_data_size(width: int, height: int, bits: int, interlaced: bool) -> int:
    """Bytes a PNG's rows inflate to: per row, a filter byte and the packed pixels."""
    total = 0
    for x0, y0, dx, dy in ADAM7 if interlaced else ((0, 0, 1, 1),):
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def _idat_spans(handle) -> list[tuple[int, int]]:
    """(offset, length) of each IDAT chunk (consecutive, after the 8-byte signature)."""
    handle.seek(8)
    spans: list[tuple[int, int]] = []
    while len(head := handle.read(8)) == 8:
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            spans.append((handle.tell(), length))
        elif spans or kind == b"IEND":
            break
        handle.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return spans


def _inflated_size(handle, spans: list[tuple[int, int]], need: int) -> int | None:
    """Bytes the IDAT data inflates to (counted up to `need`, 1 MiB at a time); None when
    it is not a valid zlib stream (the decoder then says so)."""
    stream, size = zlib.decompressobj(), 0
    try:
        for offset, length in spans:
            handle.seek(offset)
            data = handle.read(length)
            while data and size < need and not stream.eof:
                size += len(stream.decompress(data, 1 << 20))
                data = stream.unconsumed_tail
    except zlib.error:
        return None
    return size
