"""Read every pair found by `discover` and report each problem with the file named.

`check_pair(pair)` checks one pair (prepare reuses it); `check_dataset(root)` checks a folder in
parallel and adds what needs all pairs at once (duplicate images, a folder with no pairs).

Large JPEGs are decoded with Pillow's `draft` (DCT scaling, up to 8x smaller): the whole
compressed stream is still read, so truncation is still detected, at a fraction of the cost.
Duplicates are found by hashing decoded pixels; a match between reduced decodes is confirmed
with a full decode before it is reported.

Not problems (prepare converts them, see `dermaseg.fileio.to_rgb_array`): CMYK, 16-bit, grey,
RGBA and palette images; EXIF-rotated images (sizes are compared as displayed); 1-bit, 16-bit
and grey-palette masks. Reported: everything in KINDS below, each naming its file.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from dermaseg.data.discover import Discovery, Pair, Problem, discover, display_path
from dermaseg.fileio import MAX_PIXELS, note_first_frame, too_large
from dermaseg.image_checks import declared_problem
from dermaseg.parallel import parallel_map, usable_cores
from dermaseg.progress import progress as progress_bar

# Every kind of problem, in report order, with what it means.
KINDS = {
    "no_pairs": "no image/mask pair found in the folder",
    "missing_mask": "image without a mask",
    "orphan_mask": "mask without an image",
    "bad_name": "name that cannot become an id (a newline or other control character in it)",
    "misnamed_mask": "mask not named NAME_segmentation.png (ISIC) or NAME_lesion.bmp (PH2)",
    "unreadable": "empty, truncated, too large or not an image",
    "size_mismatch": "mask size differs from the image size",
    "mask_not_single_channel": "mask has colour or alpha channels",
    "mask_values_0_1": "mask uses 0/1 instead of 0/255 (prepare converts it)",
    "mask_not_binary": "mask has many values other than 0 and 255",
    "empty_mask": "mask has no lesion pixel",
    "full_mask": "mask covers the whole image",
    "duplicate_image": "same pixels as another image",
}
FIXABLE = frozenset({"mask_values_0_1"})  # problems prepare corrects instead of skipping the pair
GREY_TOLERANCE = 0.005  # a binary mask may have up to 0.5 % of pixels in 10..245 (JPEG-like edges)
DRAFT_SIDE = 512  # JPEGs are decoded at the smallest DCT scale keeping at least this long side
EXIF_ORIENTATION = 0x0112


@dataclass
class PairCheck:
    """What checking one pair found: its problems and a hash of the image's decoded pixels."""

    pair: Pair
    problems: list[Problem]
    image_hash: str | None = None
    drafted: bool = False  # the hash is of a reduced JPEG decode


@dataclass
class CheckReport:
    """Result of `check_dataset`: how many pairs, the problems, the pairs without any."""

    root: Path
    pairs: int
    problems: list[Problem]
    seconds: float
    good: list[Pair] = field(default_factory=list)
    usable: int = 0  # pairs `data prepare` would use: with no problem, or only FIXABLE ones

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        counted = Counter(p.kind for p in self.problems)
        return {kind: counted[kind] for kind in KINDS if counted[kind]}

    def to_dict(self) -> dict:
        return {
            "root": display_path(self.root),
            "pairs": self.pairs,
            "good_pairs": len(self.good),
            "usable_pairs": self.usable,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "counts": self.counts(),
            "problems": [p.to_dict() for p in self.problems],
        }

    def format_table(self) -> str:
        """A human-readable report: one line per problem, file relative to the root."""
        head = (
            f"{self.pairs} pairs checked in {self.seconds:.1f} s under {display_path(self.root)}: "
        )
        if self.ok:
            return head + "no problem found"
        rows = [(p.kind, _relative(p.path, self.root), p.detail) for p in self.problems]
        widths = [max(len(r[i]) for r in [("kind", "file", ""), *rows]) for i in range(2)]
        lines = [head + f"{len(self.problems)} problems; {self.usable} of the pairs usable by "
                 "`data prepare` (it converts 0/1 masks)", ""]
        lines.append(f"{'kind':<{widths[0]}}  {'file':<{widths[1]}}  detail")
        lines += [f"{k:<{widths[0]}}  {f:<{widths[1]}}  {d}" for k, f, d in rows]
        summary = ", ".join(f"{kind} {n}" for kind, n in self.counts().items())
        return "\n".join([*lines, "", f"summary: {summary}"])


def _relative(path: Path, root: Path) -> str:
    try:
        return display_path(path.relative_to(root))
    except ValueError:
        return display_path(path)


def _pixel_hash(image: Image.Image) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class Decoded(NamedTuple):
    """A decoded image, its size as displayed (after EXIF orientation, before any draft
    reduction) and whether it was decoded at reduced size."""

    image: Image.Image
    size: tuple[int, int]
    drafted: bool


def _decode(path: Path, draft: bool) -> Decoded:
    """Open and decode an image, reduced by DCT scaling when `draft` and it is a big JPEG.

    Raises:
        ValueError, OSError, SyntaxError: the file is unreadable (the message says why).
    """
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(too_large(width, height))
        note_first_frame(image, display_path(path))
        problem = declared_problem(image, path)  # what `predict` and the service refuse too
        if problem is not None:
            raise ValueError(problem)
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        drafted = False
        if draft and image.format == "JPEG" and max(width, height) > DRAFT_SIDE:
            scale = DRAFT_SIDE / max(width, height)
            request = (math.ceil(width * scale), math.ceil(height * scale))
            drafted = image.draft(image.mode, request) is not None
        image.load()
    shown = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return Decoded(image, shown, drafted)


def read_checked(path: Path, draft: bool = True) -> tuple[Decoded | None, Problem | None]:
    """Decode one file; on failure return (None, an "unreadable" Problem naming it)."""
    try:
        return _decode(path, draft), None
    except Image.DecompressionBombError:
        return None, Problem("unreadable", path, too_large())
    except Exception as exc:  # decoders raise many types on corrupt data: all mean unreadable
        return None, Problem("unreadable", path, _reason(exc))


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "cannot identify image file" in text:
        return "not an image (unknown format)"
    if "truncated" in text:
        return f"truncated ({text})"
    return text


def mask_array(mask: Image.Image) -> tuple[np.ndarray, str | None]:
    """Mask as HxW uint8 on a 0..255 scale, plus why it is not single-channel (None if it is).

    1-bit masks become 0/255; 16-bit and float masks are scaled to 8 bits when above 255;
    colour masks are converted to grey so their values can still be checked.
    """
    mode = mask.mode
    if mode in ("1", "L"):
        return np.asarray(mask if mode == "L" else mask.convert("L")), None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(mask, dtype=np.float64)
        if data.max(initial=0) > 255:
            data = data / 257.0
        return data.round().clip(0, 255).astype(np.uint8), None
    rgb = np.asarray(mask.convert("RGB"))
    if mode == "P" and "transparency" not in mask.info:
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].copy(), None
        return np.asarray(mask.convert("L")), "palette mask with colours"
    grey = np.asarray(mask.convert("L"))
    equal = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    transparency = " with transparency" if "transparency" in mask.info or "A" in mode else ""
    return grey, (f"{mode} mask{transparency} ({'channels equal' if equal else 'channels differ'}"
                  "): save it as 8-bit greyscale (mode L), 0 and 255")


def value_counts(mask: np.ndarray) -> np.ndarray:
    """np.bincount(mask.ravel(), minlength=256) of a uint8 mask, fast for two-valued masks
    (the usual case: ~7x faster than bincount on a 24 Mpx mask)."""
    low, high = int(mask.min()), int(mask.max())
    n_low = np.count_nonzero(mask == low)
    if low == high or n_low + np.count_nonzero(mask == high) == mask.size:
        counts = np.zeros(256, np.int64)
        counts[low] = n_low
        counts[high] += mask.size - n_low
        return counts
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask)).histogram())


def check_mask_values(path: Path, mask: np.ndarray) -> list[Problem]:
    """Value problems of an HxW uint8 mask: 0/1 values, not binary, empty, full."""
    counts = value_counts(mask)
    total = int(mask.size)
    problems = []
    if counts[1] > 0 and counts[2:].sum() == 0:
        problems.append(
            Problem(
                "mask_values_0_1",
                path,
                "values are 0/1, expected 0/255 (prepare converts 1 to 255)",
            )
        )
        lesion = int(counts[1])
    else:
        grey = int(counts[10:246].sum())
        if grey > GREY_TOLERANCE * total:
            seen = np.flatnonzero(counts)
            shown = ", ".join(str(v) for v in seen[:8]) + (" ..." if len(seen) > 8 else "")
            problems.append(
                Problem(
                    "mask_not_binary",
                    path,
                    f"{100 * grey / total:.1f} % of pixels between 10 and 245 (values {shown})",
                )
            )
        lesion = int(counts[128:].sum())
    if lesion == 0:
        problems.append(Problem("empty_mask", path, "no lesion pixel (all values below 128)"))
    elif lesion == total:
        problems.append(Problem("full_mask", path, "every pixel is lesion"))
    return problems


def check_mask(path: Path, mask: Image.Image, image_size: tuple[int, int]) -> list[Problem]:
    """All problems of a decoded mask against the (EXIF-oriented) size of its image."""
    problems = []
    if mask.size != image_size:
        turned = (" (turned: the image as displayed, after its EXIF orientation; the mask must "
                  "match that)") if mask.size == image_size[::-1] else ""
        detail = f"mask is {mask.size[0]}x{mask.size[1]}, image is {image_size[0]}x{image_size[1]}"
        problems.append(Problem("size_mismatch", path, detail + turned))
    array, channel_issue = mask_array(mask)
    if channel_issue:
        problems.append(Problem("mask_not_single_channel", path, channel_issue))
    return problems + check_mask_values(path, array)


def inspect_pair(pair: Pair, draft: bool = True) -> PairCheck:
    """Check one pair; also return the image's pixel hash for duplicate detection."""
    image, image_problem = read_checked(pair.image, draft)
    mask, mask_problem = read_checked(pair.mask, draft=False)
    problems = [p for p in (image_problem, mask_problem) if p is not None]
    if image is None or mask is None:
        return PairCheck(pair, problems)
    problems += check_mask(pair.mask, mask.image, image.size)
    return PairCheck(pair, problems, _pixel_hash(image.image), image.drafted)


def check_pair(pair: Pair) -> list[Problem]:
    """Every problem of one pair (all kinds except duplicate_image and no_pairs)."""
    return inspect_pair(pair).problems


def _full_hash(pair: Pair) -> str | None:
    decoded, _ = read_checked(pair.image, draft=False)
    return None if decoded is None else _pixel_hash(decoded.image)


def find_duplicates(results: list[PairCheck]) -> list[Problem]:
    """duplicate_image problems: each image with the same pixels as an earlier one (by id)."""
    groups: dict[str, list[PairCheck]] = defaultdict(list)
    for result in results:
        if result.image_hash is not None:
            groups[result.image_hash].append(result)
    problems = []
    for group in groups.values():
        if len(group) < 2:
            continue
        confirmed: dict[str | None, Pair] = {}
        for result in sorted(group, key=lambda r: r.pair.id):
            key = _full_hash(result.pair) if result.drafted else result.image_hash
            first = confirmed.setdefault(key, result.pair)
            if first is not result.pair:
                detail = f"same pixels as {display_path(first.image)}"
                problems.append(Problem("duplicate_image", result.pair.image, detail))
    return problems


def _inspect_all(pairs: list[Pair], workers: int, progress: bool) -> list[PairCheck]:
    with progress_bar(total=len(pairs), desc="checking", unit="pair",
                      enabled=progress) as bar:
        return parallel_map(inspect_pair, pairs, workers, bar, "checking")


def default_workers() -> int:
    return usable_cores()


def check_dataset(
    root: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    discovery: Discovery | None = None,
) -> CheckReport:
    """Discover and check every pair under `root`, `workers` processes in parallel.

    Raises:
        UsageError: `root` does not exist or is not a folder.
    """
    start = time.perf_counter()
    found = discovery or discover(root)
    results = _inspect_all(found.pairs, workers or default_workers(), progress)
    problems = list(found.problems)
    if not found.pairs:
        problems.append(Problem("no_pairs", found.root, KINDS["no_pairs"]))
    for result in results:
        problems += result.problems
    problems += find_duplicates(results)
    order = {kind: i for i, kind in enumerate(KINDS)}
    problems.sort(key=lambda p: (order.get(p.kind, len(order)), str(p.path)))
    bad = {p.path for p in problems}
    good = [pair for pair in found.pairs if pair.image not in bad and pair.mask not in bad]
    blocking = {p.path for p in problems if p.kind not in FIXABLE}
    usable = sum(pair.image not in blocking and pair.mask not in blocking for pair in found.pairs)
    return CheckReport(found.root, len(found.pairs), problems, time.perf_counter() - start, good,
                       usable)
