"""Score predicted masks against the truth with the official ISIC conventions, and report.

Two entry points:
- `evaluate_model`: a model predicts every item of a prepared split (or every pair of a raw
  dataset folder) from its SOURCE image at the ORIGINAL size, and is compared with the source
  mask at the original size: what the ISIC challenge scores.
- `evaluate_folders`: masks made elsewhere (`<id>_segmentation.png`), paired with the truth by id.

Both are written to OUT by `dermaseg.evaluation.files.write_evaluation`: metrics.csv (one
row per image), metrics.json (overall + per image), report.md, report.html, jaccard_hist.png
and gallery/ (best and worst cases, truth in blue, prediction in orange); each mean has a 95 %
percentile bootstrap interval over images (dermaseg.evaluation.stats). Per-image values and
their macro average come from dermaseg.evaluation.metrics, which
equals `isic-challenge-scoring` (masks are lesion where > 128).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermaseg.data.check import mask_array
from dermaseg.data.discover import (
    IMAGE_SUFFIXES,
    MASK_STEM,
    discover,
    display_path,
    path_from_display,
)
from dermaseg.data.manifest import read_manifest
from dermaseg.errors import DermasegError, UsageError
from dermaseg.evaluation.metrics import (
    Confusion,
    binarize,
    confusion,
    metrics_from_confusion,
    summarize,
)
from dermaseg.evaluation.report import (
    GalleryCollector,
    thumbnail,
)
from dermaseg.fileio import (
    UnsafeName,
    name_problem,
    note_first_frame,
    open_header,
    read_rgb,
)
from dermaseg.progress import progress as progress_bar
from dermaseg.quality import Quality


@dataclass
class Evaluation:
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, Confusion] = field(default_factory=dict)
    gallery: GalleryCollector = field(default_factory=GalleryCollector)
    warnings: list[str] = field(default_factory=list)  # for the report's notes and stderr
    quality: dict[str, Quality] = field(default_factory=dict)  # when a model predicted

    def add(self, image_id: str, pred: np.ndarray, truth: np.ndarray, image=None,
            quality: Quality | None = None) -> None:
        """Score one (H, W) prediction against its truth (bool, or uint8 lesion > 128)."""
        image_id = display_path(image_id)  # a non-UTF-8 file name cannot go into CSV/JSON/HTML
        counts = confusion(pred, truth)
        values = metrics_from_confusion(counts)
        self.per_image[image_id] = values
        self.counts[image_id] = counts
        if quality is not None:
            self.quality[image_id] = quality

        def draw() -> np.ndarray:
            base = image if image is not None else np.full((*pred.shape, 3), 40, np.uint8)
            return thumbnail(base, binarize(truth), binarize(pred))

        self.gallery.offer(image_id, values["jaccard"], draw)

    def overall(self) -> dict[str, float]:
        return summarize(self.per_image)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as (H, W) uint8 0..255, exactly as stored (no EXIF rotation, like the scorer).

    Raises:
        DermasegError: unreadable, too large, truncated (fileio.open_header), or not
            single-channel.
    """
    try:
        with open_header(path, f"{display_path(path)}: not a readable mask") as handle:
            note_first_frame(handle, display_path(path))
            handle.load()
            array, issue = mask_array(handle)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DermasegError(f"{display_path(path)}: not a readable mask ({exc})") from exc
    if issue is not None and "channels equal" not in issue:
        raise DermasegError(f"{display_path(path)}: not a single-channel mask ({issue})")
    return array


def _masks_by_id(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise UsageError(f"{display_path(folder)}: {what} folder does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = MASK_STEM.match(path.stem)
        if path.is_file() and match and path.suffix.lower() in IMAGE_SUFFIXES \
                and not path.name.startswith("."):
            key = match["id"]
            if key in found:  # the official scorer refuses this too
                raise DermasegError(f"{display_path(folder)}: two {what} masks for id "
                                    f"{display_path(key)}: {display_path(found[key].name)}, "
                                    f"{display_path(path.name)} (keep one)")
            found[key] = path
    if not found:
        from dermaseg.data.prepare import is_prepared_folder

        if is_prepared_folder(folder):
            raise UsageError(
                f"{display_path(folder)}: a prepared dataset (letterboxed arrays written by "
                f"`dermaseg data prepare`), not a {what} folder of <id>_segmentation.png masks; "
                f"pass the original masks, or score a model on it with `dermaseg evaluate MODEL "
                f"--data {display_path(folder)}`")
        raise UsageError(f"{display_path(folder)}: no <id>_segmentation.png masks in the {what} "
                         "folder")
    return found


IMAGE_EXTENSIONS = sorted(IMAGE_SUFFIXES)


def _shown(names: list[str]) -> str:
    """'a, b, ...': at most 20 names, then the count."""
    return ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")


def check_ids(ids, origin: str) -> None:
    """Refuse, before any work, ids that cannot become file names (the report's gallery
    pictures are named by id): a path such as ../../x, a newline ... (fileio.name_problem).

    Raises:
        UnsafeName: listing them, named by `origin` (the manifest or folder they come from).
    """
    bad = [f"{image_id!r} ({problem})" for image_id in ids
           if (problem := name_problem(display_path(image_id))) is not None]
    if bad:
        raise UnsafeName(f"{origin}: {len(bad)} id(s) cannot become file names: "
                         f"{_shown(bad)}; nothing was written")


def _find_image(image_id: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for suffix in (*IMAGE_EXTENSIONS, *(s.upper() for s in IMAGE_EXTENSIONS)):
            candidate = folder / f"{image_id}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def evaluate_folders(pred_dir: Path, truth_dir: Path, images_dir: Path | None = None,
                     progress: bool = True) -> Evaluation:
    """Pair `<id>_segmentation.png` in both folders by id and score each pair.

    Images for the gallery are looked up as `<id>.<ext>` in `images_dir` and `truth_dir`.

    Raises:
        DermasegError: a truth mask has no prediction (all missing ids listed), or sizes differ.
    """
    truths = _masks_by_id(truth_dir, "truth")
    check_ids(truths, display_path(truth_dir))
    preds = _masks_by_id(pred_dir, "prediction")
    missing = sorted(set(truths) - set(preds))
    if missing:
        raise DermasegError(f"{display_path(pred_dir)}: no prediction for {_shown(missing)}")
    folders = [f for f in (images_dir, truth_dir) if f is not None]
    result, binary01 = Evaluation(), []
    extra = sorted(set(preds) - set(truths))
    if extra:
        result.warnings.append(f"{len(extra)} prediction(s) without a truth mask not scored: "
                               f"{_shown(extra)}")
    for image_id, truth_path in progress_bar(truths.items(), desc="evaluate", unit="image",
                                             enabled=progress):
        truth, pred = read_mask(truth_path), read_mask(preds[image_id])
        binary01 += [display_path(p) for p, a in ((truth_path, truth), (preds[image_id], pred))
                     if a.max(initial=0) == 1]
        if truth.shape != pred.shape:
            raise DermasegError(f"{display_path(preds[image_id])}: size {pred.shape[1]}x"
                                f"{pred.shape[0]}, truth is {truth.shape[1]}x{truth.shape[0]}")
        image_path = _find_image(image_id, folders)
        image = _image_of_size(image_path, truth.shape) if image_path else None
        result.add(image_id, pred, truth, image)
    if binary01:
        result.warnings.append(
            f"{len(binary01)} mask(s) with values 0 and 1 only, scored as all background like "
            f"the official scorer (lesion where > 128; save masks as 0/255): {_shown(binary01)}")
    return result


def _image_of_size(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        image = read_rgb(path)
    except DermasegError:
        return None
    return image if image.shape[:2] == shape else None


def _source(value: str, manifest: dict) -> Path:
    """A source path as recorded in the manifest; a relative one (relative to where `prepare`
    ran) is tried from here, then below the manifest's resolved "source" root."""
    path = Path(value)
    if not path.exists() and path_from_display(value).exists():  # a non-UTF-8 name
        path = path_from_display(value)
    if path.is_absolute() or path.exists() or not manifest.get("source"):
        return path
    root = Path(manifest["source"])
    for start in range(len(path.parts)):
        candidate = root.joinpath(*path.parts[start:])
        if candidate.exists():
            return candidate
    return path


def split_items(data_dir: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(id, source image, source mask) of a prepared split, or of every pair of a raw folder."""
    return source_items(data_dir, split)[0]


def _in_split(item: dict, split: str) -> bool:
    """`split` is train/val/test, or foldK: fold K of `data prepare --folds`."""
    if split.startswith("fold") and split[4:].isdigit():
        return item.get("fold") == int(split[4:])
    return item.get("split") == split


def source_items(data_dir: Path, split: str) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """`split_items`, and the images of a raw folder that have no mask (not scored).

    Raises:
        UsageError: no such split (a raw folder has only the default, "test": all its pairs),
            or no pairs.
        DermasegError: a manifest item lacks its source paths.
    """
    if not (data_dir / "manifest.json").is_file():
        if split != "test":  # the default; any other split would silently score every pair
            raise UsageError(f"--split {split}: {display_path(data_dir)} is a raw folder (every "
                             "pair is scored); splits and folds are those of a prepared dataset: "
                             "give the `dermaseg data prepare` output as --data")
        found = discover(data_dir)
        if not found.pairs:
            raise UsageError(f"{display_path(data_dir)}: neither a prepared dataset "
                             "(manifest.json) nor a folder with image/mask pairs")
        unpaired = [p.path for p in found.problems if p.kind == "missing_mask"]
        check_ids([p.id for p in found.pairs], display_path(data_dir))
        return [(p.id, p.image, p.mask) for p in found.pairs], unpaired
    manifest = read_manifest(data_dir)  # checked: ids, splits, folds, geometry
    items = []
    for item in manifest["items"]:
        if not isinstance(item, dict) or not _in_split(item, split):
            continue
        try:
            items.append((str(item["id"]), _source(item["source_image"], manifest),
                          _source(item["source_mask"], manifest)))
        except KeyError as exc:
            raise DermasegError(f"{display_path(data_dir / 'manifest.json')}: item "
                                f"{item.get('id')!r} has no {exc}") from exc
    check_ids([image_id for image_id, _, _ in items], display_path(data_dir / "manifest.json"))
    if not items:
        counts = Counter(str(i.get("split")) for i in manifest["items"] if isinstance(i, dict))
        counts.update(f"fold{i['fold']}" for i in manifest["items"]
                      if isinstance(i, dict) and i.get("fold") is not None)
        there = ", ".join(f"{name} ({n})" for name, n in counts.items()) or "none"
        raise UsageError(f"{display_path(data_dir)}: split {split!r} has no items; "
                         f"--split takes one of: {there}")
    return items, []


def iter_pairs(items: list[tuple[str, Path, Path]], draft_size: int) -> Iterator:
    """(id, path, (image, original (h, w)), truth mask 0/255, None) per usable pair, the image
    decoded as `predict` and `data prepare` decode it (reduced for a big JPEG);
    (id, path, None, None, problem) else."""
    from dermaseg.infer.inputs import iter_decoded

    masks = {image_id: mask for image_id, _, mask in items}
    pairs = [(i, p) for i, p, _ in items]
    for image_id, path, decoded, error in iter_decoded(pairs, ahead=16, draft_size=draft_size):
        problem = error
        if problem is None:
            try:
                truth = read_mask(masks[image_id])
            except DermasegError as exc:
                problem = str(exc)
        if problem is None and truth.shape != tuple(decoded[1]):
            problem = (f"{display_path(masks[image_id])}: mask is {truth.shape[1]}x"
                       f"{truth.shape[0]}, its image is {decoded[1][1]}x{decoded[1][0]}")
        if problem is not None:
            yield image_id, path, None, None, problem
            continue
        if truth.max(initial=0) <= 1:  # a 0/1 mask, as `data prepare` reads it
            truth = truth * np.uint8(255)
        yield image_id, path, decoded, truth, None


def evaluate_model(predictor, items: list[tuple[str, Path, Path]], postprocess=None,
                   progress: bool = True) -> Evaluation:
    """Predict each source image at its original size and score it against its source mask.

    The masks are those `dermaseg predict` writes (the same `segment`: decoding, letterbox,
    post-processing and quality estimate); the image at full size is read only for the CRF.

    Raises:
        DermasegError: listing every pair whose image or mask is unreadable or whose sizes
            differ (after the first one, the rest are only checked, not predicted).
    """
    from dermaseg.infer.segment import Decoded, SegmentOptions, segment

    result, batch, problems = Evaluation(), [], []
    options = SegmentOptions(postprocess=postprocess)

    def flush() -> None:
        decoded = [Decoded(image, original, functools.partial(read_rgb, path))
                   for _, path, (image, original), _ in batch]
        outputs = segment(predictor, decoded, options)
        for (image_id, _, (image, _), truth), output in zip(batch, outputs, strict=True):
            if isinstance(output, DermasegError):
                raise output
            shown = image if output.image is None else output.image
            result.add(image_id, output.mask, truth, shown, output.quality)
        batch.clear()

    with progress_bar(total=len(items), desc="evaluate", unit="image",
                      enabled=progress) as bar:
        for image_id, path, decoded, truth, problem in iter_pairs(
                items, predictor.meta.image_size):
            bar.update(1)
            if problem is not None:
                problems.append(problem)
                batch.clear()
            elif not problems:
                batch.append((image_id, path, decoded, truth))
                if len(batch) >= predictor.batch_size:
                    flush()
        if batch and not problems:
            flush()
    if problems:
        raise DermasegError(f"{len(problems)} of {len(items)} pairs cannot be scored (fix or "
                            "remove them; nothing was written):\n  " + "\n  ".join(problems))
    return result
