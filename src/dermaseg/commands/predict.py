"""`dermaseg predict MODEL INPUT... -o OUT`: masks at each image's original size."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from dermaseg.errors import DermasegError, UsageError


def postprocess_config(keep_largest: bool, fill_holes: bool, min_area: int, crf: bool):
    """The PostprocessConfig for these flags, or None when none is asked for."""
    if not (keep_largest or fill_holes or min_area > 0 or crf):
        return None
    from dermaseg.infer.postprocess import PostprocessConfig, _import_crf

    if crf:
        _import_crf()  # fail before predicting anything when the extra is missing
    return PostprocessConfig(largest_component=keep_largest, fill_holes=fill_holes,
                             min_area=min_area, crf=crf)


def tta_config(tta: bool, scales: str | None):
    """--tta (the four flips) and --tta-scales "0.75,1,1.25" -> TTAConfig, or None."""
    if not tta and scales is None:
        return None
    from dermaseg.infer.tta import TTAConfig

    flips = ("none", "h", "v", "hv") if tta else ("none",)
    if scales is None:
        return TTAConfig(flips=flips)
    try:
        values = tuple(float(v) for v in scales.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"--tta-scales {scales}: expected numbers like 0.75,1,1.25") from exc
    return TTAConfig(flips=flips, scales=values)


def prediction_settings(model: str, tta, options) -> dict:
    """What makes a mask: each model file (path, size, modification time), the TTA, the
    post-processing and the pixel size (recorded in OUT/predict.json)."""
    from dataclasses import asdict

    from dermaseg.infer.ensemble import split_models

    models = []
    for part in split_models(model):
        path = Path(part)
        stat = path.stat()
        models.append({"path": str(path.resolve()), "bytes": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns})
    postprocess = options.postprocess
    return {"models": models, "tta": asdict(tta) if tta else None,
            "postprocess": asdict(postprocess) if postprocess else None,
            "pixel_size_mm": options.pixel_size_mm}


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


# Options `predict` and `evaluate MODEL` share.
MODEL_HELP = ("A checkpoint (.ckpt) or an exported .onnx or .tflite model; several separated by "
              "commas (a,b,c) predict with their ensemble (mean probability).")
TTA = typer.Option(False, "--tta", help="Average over the four flips.")
KEEP_LARGEST = typer.Option(False, "--keep-largest", help="Keep the largest lesion.")
FILL_HOLES = typer.Option(False, "--fill-holes", help="Fill holes inside the lesion.")
MIN_AREA = typer.Option(0, "--min-area", min=0, help="Remove specks under N pixels.")
CRF = typer.Option(False, "--crf", help="Dense-CRF refinement (extra: dermaseg\\[crf]).")
BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="Images per forward pass.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


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
    overlay: bool = typer.Option(False, "--overlay", help="Write overlay/<id>_overlay.jpg."),
    measure: bool = typer.Option(False, "--measure", help="Write measurements.jsonl."),
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
    from dermaseg.infer.batch import PredictOptions, list_inputs, parse_shard, predict_files
    from dermaseg.infer.ensemble import Ensemble, load_predictor

    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise UsageError(f"--pixel-size {pixel_size}: must be a finite number > 0 (mm per "
                         "pixel)")
    if pixel_size is not None and not measure:
        raise UsageError(f"--pixel-size {pixel_size}: used only by --measure (areas and "
                         "lengths in mm); add --measure")
    options = PredictOptions(
        overwrite=overwrite, save_prob=save_prob, overlay=overlay, measure=measure,
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
    if summary.failed:
        for message in summary.failed:
            typer.echo(f"  failed: {message}", err=True)
        raise DermasegError(f"{len(summary.failed)} input(s) could not be predicted (listed above)")
