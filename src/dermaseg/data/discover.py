"""Find image/mask pairs in the layouts people download.

Supported, anywhere below the root (searched recursively, symlinks followed once):

- ISIC 2016/2017/2018 Task 1: images `ISIC_0000000.jpg` in one folder, masks
  `ISIC_0000000_segmentation.png` (or `_Segmentation.png`) in another; `ATTRIBUTION.txt`,
  `LICENSE.txt`, CSV metadata and ISIC 2017 `*_superpixels.png` are ignored.
- PH2: `IMD002/IMD002_Dermoscopic_Image/IMD002.bmp` + `IMD002/IMD002_lesion/IMD002_lesion.bmp`;
  the `IMD002_roi/` colour-structure labels are ignored.
- A flat folder: `NAME.<jpg|jpeg|png|bmp|tif|tiff|webp>` + `NAME_segmentation.png`.

A mask is paired with the image of the same id, preferring the image in the same folder, then
the one in the nearest folder. Hidden files (including dermaseg's own `.dermaseg-*.tmp` files) and
`__MACOSX/` folders are skipped. Files are not opened here: `dermaseg.data.check` reads them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dermaseg.errors import UsageError
from dermaseg.fileio import name_problem

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# `<id>_segmentation` (ISIC, any case) or `<id>_lesion` (PH2)
MASK_STEM = re.compile(r"^(?P<id>.+?)_(segmentation|lesion)$", re.IGNORECASE)
# Other common mask names (`<id>_mask`, `-seg`, `_gt`, `_label`): never paired (the ISIC and PH2
# names are the contract), but reported as masks to rename when `<id>` is an image.
OTHER_MASK_STEM = re.compile(r"^(?P<id>.+?)[_-](mask|seg|gt|label)s?$", re.IGNORECASE)
IGNORED_STEM = re.compile(r"_superpixels$", re.IGNORECASE)
IGNORED_DIR = re.compile(r"(^__MACOSX$)|(_roi$)", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """One image and its lesion mask; `id` is unique within a Discovery."""

    id: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file: `kind` is a short machine name, `detail` says what."""

    kind: str
    path: Path
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": display_path(self.path), "detail": self.detail}


@dataclass
class Discovery:
    """Pairs found under `root` (sorted by id) and the files that could not be paired."""

    root: Path
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def display_path(path: os.PathLike | str) -> str:
    """A printable form of any path: undecodable bytes of non-UTF-8 names become `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_from_display(text: str) -> Path:
    """The inverse of display_path: `\\xNN` escapes back to the bytes of a non-UTF-8 name."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode())
    return Path(os.fsdecode(raw))


def _is_special(entry: os.DirEntry) -> bool:
    """True for FIFOs, sockets and devices (or links to them); broken links are left to check."""
    try:
        return not stat.S_ISREG(entry.stat().st_mode)
    except OSError:
        return False


def walk_images(root: Path, problems: list[Problem], check_names: bool = True) -> list[Path]:
    """Every image file (or symlink to one, or broken symlink) under root, each folder once:
    the one listing of a folder's images for every command (check, prepare, evaluate,
    predict, calibration).

    Symlinked folders are followed; folders are identified by (device, inode) so a symlink
    loop is visited once. Hidden files and folders, `__MACOSX/`, PH2's `*_roi/` and ISIC's
    `*_superpixels` maps are skipped. FIFOs and devices, folders that cannot be listed and
    (with `check_names`) names that cannot become file names are added to `problems`.
    """
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError as exc:
            problems.append(Problem("unreadable", folder, f"cannot open folder ({exc.strerror})"))
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem("unreadable", folder, f"cannot list folder ({exc.strerror})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not IGNORED_DIR.search(entry.name):
                    stack.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES and not IGNORED_STEM.search(path.stem):
                if _is_special(entry):  # a FIFO or device would block or never end when read
                    problems.append(Problem("unreadable", path, "not a regular file"))
                elif check_names and (problem := name_problem(entry.name)) is not None:
                    problems.append(Problem("bad_name", path, f"{entry.name!r}: {problem}"))
                else:
                    files.append(path)
    return files


def _distance(a: Path, b: Path) -> int:
    """Number of folder steps between the parents of two files (0: same folder)."""
    pa, pb = a.parent.parts, b.parent.parts
    common = 0
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        common += 1
    return (len(pa) - common) + (len(pb) - common)


def _unique_id(base: str, image: Path, root: Path, taken: set[str]) -> str:
    """`base`, or when another pair already has it, the image path relative to root."""
    if base not in taken:
        return base
    relative = image.relative_to(root).with_suffix("")
    candidate = "__".join(relative.parts)
    number = 2
    while candidate in taken:
        candidate = f"{'__'.join(relative.parts)}_{number}"
        number += 1
    return candidate


def _nearest_pairs(images: list[Path], masks: list[Path]) -> tuple[list, list[Path], list[Path]]:
    """Pair images and masks of one id, closest folders first, each file used once.

    Returns (image, mask) pairs sorted by image path, the images left without a mask and the
    masks left without an image.
    """
    candidates = sorted((_distance(i, m), str(i), str(m), i, m) for i in images for m in masks)
    used: set[Path] = set()
    pairs = []
    for *_, image, mask in candidates:
        if image not in used and mask not in used:
            used.update((image, mask))
            pairs.append((image, mask))
    pairs.sort(key=lambda pair: str(pair[0]))
    lonely_images = sorted((i for i in images if i not in used), key=str)
    return pairs, lonely_images, [m for m in masks if m not in used]


def _expected_mask(image: Path, key: str) -> str:
    """The mask name an image without mask should have had: PH2's, or ISIC's."""
    shown = display_path(key)
    if image.parent.name.lower().endswith("_dermoscopic_image"):
        return f"{shown}_lesion/{shown}_lesion.bmp"
    return f"{shown}_segmentation.png"


def _lonely_image_problem(image: Path, key: str, images: dict[str, list[Path]],
                          masks: dict[str, list[Path]], misnamed: dict[str, Path]) -> Problem:
    """An image without a mask, or a mask named `<id>_mask` (etc.) beside image `<id>`."""
    other = OTHER_MASK_STEM.match(key)
    if other and other["id"] in images:
        owner = other["id"]
        if owner in masks:  # renaming it would replace the mask that is used
            return Problem("misnamed_mask", image,
                           f"looks like a second mask of {images[owner][0].name}, which has "
                           f"{masks[owner][0].name}; not used (keep one mask per image)")
        return Problem("misnamed_mask", image,
                       f"looks like the mask of {images[owner][0].name}: name it "
                       f"{display_path(owner)}_segmentation.png")
    detail = f"no mask named {_expected_mask(image, key)} found"
    if key in misnamed:
        detail += f" ({misnamed[key].name} looks like it: rename it)"
    return Problem("missing_mask", image, detail)


def _match(images: dict[str, list[Path]], masks: dict[str, list[Path]], root: Path) -> Discovery:
    """Pair images and masks with the same id, nearest folder first."""
    found = Discovery(root=root)
    taken: set[str] = set()
    misnamed = {match["id"]: paths[0] for stem, paths in images.items()
                if (match := OTHER_MASK_STEM.match(stem)) and match["id"] in images
                and match["id"] not in masks}
    for key in sorted(set(images) | set(masks)):
        pairs, lonely_images, lonely_masks = _nearest_pairs(images.get(key, []),
                                                            masks.get(key, []))
        for image, mask in pairs:
            pair_id = _unique_id(key, image, root, taken)
            problem = name_problem(f"{pair_id}_segmentation.png")  # the longest name it gets
            if problem is not None:  # a newline in it, say: rename the files
                detail = f"its id {pair_id!r} cannot become a file name: {problem}"
                found.problems.append(Problem("bad_name", image, detail))
                continue
            taken.add(pair_id)
            found.pairs.append(Pair(pair_id, image, mask))
        for image in lonely_images:
            found.problems.append(_lonely_image_problem(image, key, images, masks, misnamed))
        for mask in lonely_masks:
            detail = f"no image with id {display_path(key)!r} found"
            found.problems.append(Problem("orphan_mask", mask, detail))
    found.pairs.sort(key=lambda p: p.id)
    return found


def discover(root: str | os.PathLike) -> Discovery:
    """Find every image/mask pair below `root`.

    Returns:
        Discovery with the pairs sorted by id, plus "missing_mask" (image without mask),
        "misnamed_mask" (`<id>_mask.png` and the like beside image `<id>`), "orphan_mask"
        (mask without image) and "unreadable" (folder that cannot be listed)
        problems. A folder without any pair gives an empty Discovery, not an error.

    Raises:
        UsageError: `root` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{display_path(root)}: no such folder")
    if not root.is_dir():
        raise UsageError(f"{display_path(root)}: not a folder")
    problems: list[Problem] = []
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for path in walk_images(root, problems):
        match = MASK_STEM.match(path.stem)
        if match:
            masks.setdefault(match["id"], []).append(path)
        else:
            images.setdefault(path.stem, []).append(path)
    found = _match(images, masks, root)
    found.problems = problems + found.problems
    return found
