"""The images an export is checked (and an INT8 model calibrated) on: the user's, a prepared
dataset's train split, or synthetic dermoscopy images. Importing it imports no PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermaseg.errors import DermasegError, UsageError

SYNTH_SEED = 1234


def check_calibration_count(count: int) -> None:
    """Raises: UsageError: fewer than 2 images asked for (--calib-count)."""
    if count < 2:
        raise UsageError(f"--calib-count must be at least 2, got {count}")


def calibration_images(folder: Path | None, count: int, image_size: int,
                       progress: bool = True) -> tuple[list[np.ndarray], str]:
    """Up to `count` HxWx3 uint8 images: a seeded random sample of the image files under
    `folder` (masks excluded), or synthetic dermoscopy images when `folder` is None.

    Returns:
        (images, a description of where they came from, then a line naming each file of
        `folder` that could not be read and why)

    Raises:
        UsageError: `count` below 2, or the folder is missing or holds no readable image.
    """
    from dermaseg.progress import progress as progress_bar

    check_calibration_count(count)
    if folder is None:
        from dermaseg.data.synth import SynthOptions, synth_pair

        rng = np.random.default_rng(SYNTH_SEED)
        side = max(64, image_size)
        images = [synth_pair(rng, int(side * rng.uniform(0.8, 1.4)), side, SynthOptions())[0]
                  for _ in progress_bar(range(count), desc="synth", unit="image",
                                       enabled=progress)]
        return images, f"{count} synthetic images (dermaseg.data.synth)"
    from dermaseg.fileio import read_rgb
    from dermaseg.infer.inputs import list_inputs

    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise UsageError(f"--calib {folder}: {what} (give a folder of images, or a folder "
                         "written by `dermaseg data prepare`)")
    if (folder / "manifest.json").is_file():
        return _prepared_images(folder, count)
    files, unreadable = list_inputs([str(folder)])
    if len(files) > count:
        picked = np.random.default_rng(0).choice(len(files), size=count, replace=False)
        files = [files[i] for i in sorted(picked)]
    images = []
    for path in progress_bar(files, desc="read", unit="image", enabled=progress):
        try:
            images.append(read_rgb(path))
        except DermasegError as exc:  # the message names the file and why
            unreadable.append(str(exc))
    skipped = "".join(f"\n  not used: {message}" for message in unreadable)
    if len(images) < 2:
        raise UsageError(f"--calib {folder}: needs at least 2 readable images, found "
                         f"{len(images)}{skipped}")
    return images, f"{len(images)} images from {folder}{skipped}"


def _prepared_images(folder: Path, count: int) -> tuple[list[np.ndarray], str]:
    """A seeded sample of the train split of a `dermaseg data prepare` folder (letterboxed
    uint8 arrays, exactly what the model saw in training)."""
    from dermaseg.data.dataset import PreparedDataset

    dataset = PreparedDataset(folder, "train", cache=False)
    if len(dataset) < 2:
        raise UsageError(f"--calib {folder}: the train split has {len(dataset)} items, need 2")
    picked = np.random.default_rng(0).choice(len(dataset), size=min(count, len(dataset)),
                                             replace=False)
    images = [dataset.arrays(int(i))[0] for i in sorted(picked)]
    return images, f"{len(images)} training images of the prepared dataset {folder}"
