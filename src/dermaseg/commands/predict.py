"""`dermaseg predict MODEL INPUT... -o OUT`: masks at each image's original size."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from dermaseg.commands.options import (
    BATCH_SIZE,
    CRF,
    DEVICE,
    FILL_HOLES,
    KEEP_LARGEST,
    MIN_AREA,
    MODEL_HELP,
    QUIET,
    TTA,
)
from dermaseg.errors import DermasegError, UsageError


def prediction_settings(model: str, tta, options) -> dict:
    """What makes a mask: each model file (path, size, modification time), the TTA, the
    post-processing and the pixel size (recorded in OUT/predict.json)."""
    from dataclasses import asdict

    from dermaseg.infer.ensemble import split_models
    from dermaseg.model_folder import resolve_model, weights_file

    models = []
    for part in split_models(model):
        path = weights_file(resolve_model(part))  # a hub model's: in its cache, per revision
        stat = path.stat()
        models.append({"path": str(path.resolve()), "bytes": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns})
    postprocess = options.postprocess
    return {"models": models, "tta": asdict(tta) if tta else None,
            "postprocess": asdict(postprocess) if postprocess else None,
            "pixel_size_mm": options.pixel_size_mm}


def review_line(summary) -> str:
    """How many of the masks written need a human look, and which (quality.csv says why)."""
    flagged = summary.review
    if not flagged:
        return f"review recommended: none of the {len(summary.written)} masks written"
    shown = ", ".join(flagged[:10]) + (f" and {len(flagged) - 10} more" if len(flagged) > 10
                                       else "")
    return (f"review recommended: {len(flagged)} of {len(summary.written)} masks "
            f"(quality.csv says why): {shown}")


def refuse_prepared_inputs(inputs: list[str]) -> None:
    """A `data prepare` output holds letterboxed .npy arrays, not images to predict."""
    from dermaseg.data.prepare import is_prepared_folder

    for text in inputs:
        folder = Path(text)
        if is_prepared_folder(folder):
            raise UsageError(
                f"{text}: a prepared dataset (written by `dermaseg data prepare`), not images; "
                f"predict the original image files, or score the model on it with `dermaseg "
                f"evaluate MODEL --data {text}`")


def predict(
    model: str = typer.Argument(..., help=MODEL_HELP),
    inputs: list[str] = typer.Argument(..., help="Image files, folders (recursive) or globs."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    tta: bool = TTA,
    tta_scales: str = typer.Option(None, "--tta-scales", help="Also rescale, e.g. 0.75,1,1.25."),
    keep_largest: bool = KEEP_LARGEST,
    fill_holes: bool = FILL_HOLES,
    min_area: int = MIN_AREA,
    crf: bool = CRF,
    save_prob: bool = typer.Option(False, "--save-prob", help="Write prob/<id>_prob.png."),
    save_uncertainty: bool = typer.Option(
        False, "--save-uncertainty", help="Write <id>_uncertainty.png beside the mask (8-bit, "
        "255 where the probability is 0.5)."),
    overlay: bool = typer.Option(False, "--overlay", help="Write overlay/<id>_overlay.jpg."),
    measure: bool = typer.Option(False, "--measure", help="Write measurements.csv (a row "
                                 "per image) and measurements.jsonl."),
    pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size in mm."),
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images already predicted."),
    shard: str = typer.Option(
        None, "--shard",
        help="i/n: this process takes images i, i+n, ... Run n processes (one per GPU, "
             "e.g. CUDA_VISIBLE_DEVICES=k) with the same OUT; under torchrun the default is "
             "RANK/WORLD_SIZE.",
    ),
    quiet: bool = QUIET,
) -> None:
    """Predict lesion masks: OUT/<id>_segmentation.png, 8-bit 0/255, each image's own size.

    Unreadable inputs are reported and skipped (exit 1 at the end); images whose mask (and
    every extra asked for) already exists are skipped, so an interrupted run resumes where it
    stopped. MODEL may be a comma list (a.ckpt,b.ckpt,...): the members' probabilities are
    averaged, then thresholded once; they must share input size, mean/std and threshold.
    """
    from dermaseg.infer.batch import PredictOptions, output_lines, predict_files
    from dermaseg.infer.ensemble import Ensemble, load_predictor
    from dermaseg.infer.inputs import list_inputs, parse_shard
    from dermaseg.infer.postprocess import postprocess_config
    from dermaseg.infer.tta import tta_config

    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise UsageError(f"--pixel-size {pixel_size}: must be a finite number > 0 (mm per "
                         "pixel)")
    if pixel_size is not None and not measure:
        raise UsageError(f"--pixel-size {pixel_size}: used only by --measure (areas and "
                         "lengths in mm); add --measure")
    options = PredictOptions(
        overwrite=overwrite, save_prob=save_prob, save_uncertainty=save_uncertainty,
        overlay=overlay, measure=measure,
        pixel_size_mm=pixel_size, postprocess=postprocess_config(keep_largest, fill_holes,
                                                                 min_area, crf),
        progress=not quiet,
    )
    shard_index = parse_shard(shard)
    refuse_prepared_inputs(inputs)
    files, missing = list_inputs(inputs, exclude=out)
    if not files:  # nothing to predict: refused before OUT is made
        raise UsageError("; ".join(missing) if missing else
                         f"no images found in {', '.join(inputs)}")
    tta_setting = tta_config(tta, tta_scales)
    predictor = load_predictor(model, device=device, tta=tta_setting, batch_size=batch_size)
    options.settings = prediction_settings(model, tta_setting, options)
    summary = predict_files(predictor, files, out, options, shard_index)
    summary.failed = missing + summary.failed
    if isinstance(predictor, Ensemble):
        typer.echo(predictor.describe())
    typer.echo(f"{len(summary.written)} written, {len(summary.skipped)} already there, "
               f"{len(summary.failed)} failed -> {out}")
    typer.echo("\n".join(f"  {line}" for line in output_lines(out, options)))
    typer.echo(review_line(summary))
    if summary.failed:
        for message in summary.failed:
            typer.echo(f"  failed: {message}", err=True)
        raise DermasegError(f"{len(summary.failed)} input(s) could not be predicted (listed above)")
