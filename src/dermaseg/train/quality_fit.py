"""After training: fit the mask quality estimate (dermaseg.quality) on the run's validation
images and store it in best.ckpt, so that every export of it gives the same estimate."""

from __future__ import annotations

import sys
from pathlib import Path

from dermaseg.checkpoint import write_meta
from dermaseg.config import Config
from dermaseg.errors import DermasegError
from dermaseg.evaluation.calibrate import MIN_IMAGES, fit_quality
from dermaseg.evaluation.evaluate import source_items
from dermaseg.infer.predictor import Predictor


def validation_split(config: Config) -> str:
    """The split a run validates on: its fold under cross-validation, else "val"."""
    return "val" if config.data.fold is None else f"fold{config.data.fold}"


def fit_run_quality(run: Path, data_dir: Path, config: Config, *, device: str = "auto",
                    progress: bool = True) -> dict | None:
    """Fit the estimate of run/best.ckpt on its validation images and store it there.

    Returns what it was fitted on and how well (the estimator's `fitted_on`), or None with a
    note on stderr when it cannot be fitted (too few validation images, sources moved): the
    model then reports no estimated Jaccard, only the rules (an empty mask, say).
    """
    split = validation_split(config)
    best = run / "best.ckpt"
    try:
        items, _ = source_items(data_dir, split)
        if len(items) < MIN_IMAGES or not best.is_file():
            print(f"note: quality estimate not fitted: {len(items)} validation images "
                  f"(it needs {MIN_IMAGES})", file=sys.stderr)
            return None
        print(f"quality estimate: fitting on the {len(items)} {split} images and degraded "
              "copies of them", file=sys.stderr)
        predictor = Predictor.load(best, device=device)
        about = {"data": str(data_dir), "split": split}
        estimator = fit_quality(predictor, items, about, progress=progress)
        write_meta(best, predictor.meta.with_quality(estimator))
        error = estimator.fitted_on["in_sample"]["one_pass"]["mean_absolute_error"]
        print(f"quality estimate: stored in {best} (mean absolute error {error:.3f} on the "
              "images it was fitted on; `dermaseg evaluate` judges it on others)",
              file=sys.stderr)
    except DermasegError as exc:
        print(f"note: quality estimate not fitted ({exc}); `dermaseg calibrate` fits it "
              "later", file=sys.stderr)
        return None
    return estimator.fitted_on
