"""`dermaseg calibrate MODEL --data DIR`: fit the model's mask quality estimate."""

from __future__ import annotations

from pathlib import Path

import typer

from dermaseg.commands.options import DEVICE, QUIET
from dermaseg.errors import UsageError


def _check_storable(model: Path) -> None:
    """Raises UsageError, before any work, for a model the estimate cannot be stored in."""
    from dermaseg.model_meta import model_kind

    if model_kind(model) == "tflite" or model.is_dir():
        raise UsageError(f"{model}: calibrate a checkpoint (.ckpt) or an ONNX export; a "
                         "TFLite export or a model folder takes the estimate of the checkpoint "
                         "it is exported from")


def _store(model: Path, meta) -> None:
    """The metadata with its new estimator, into the model file itself."""
    from dermaseg.model_meta import model_kind

    if model_kind(model) == "onnx":
        from dermaseg.export.onnx import write_onnx_meta

        write_onnx_meta(model, meta)
    else:
        from dermaseg.checkpoint import write_meta

        write_meta(model, meta)


def calibrate(
    model: Path = typer.Argument(..., help="Checkpoint (.ckpt) or .onnx model; its estimate "
                                 "is stored in the file."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset (or a raw pair folder) "
                              "of images the model did not train on."),
    split: str = typer.Option("val", "--split", help="Split of the prepared dataset (foldK: "
                              "a cross-validation model's own validation images)."),
    degrade: bool = typer.Option(True, "--degrade/--no-degrade", help="Also fit on degraded "
                                 "copies (darker, blurred, cropped...) of each image."),
    device: str = DEVICE,
    quiet: bool = QUIET,
) -> None:
    """Fit the mask quality estimate (estimated Jaccard, review flag) on held-out images.

    Each image is predicted as it is and after degradations a photo from another clinic
    brings; a small linear model maps the probability map's signals to the actual Jaccard.
    `dermaseg train` does this on its validation split; use this command for another set of
    images, or for a model trained before the estimate existed.
    """
    from dermaseg.data.discover import display_path
    from dermaseg.evaluation.calibrate import fit_quality
    from dermaseg.evaluation.evaluate import source_items
    from dermaseg.infer.predictor import Predictor

    _check_storable(model)
    prepared = (data / "manifest.json").is_file()
    if split != "val" and not prepared:
        raise UsageError(f"--split {split}: {data} is a raw folder (all its pairs are used)")
    items, _ = source_items(data, split if prepared else "test")
    predictor = Predictor.load(model, device=device)
    about = {"data": display_path(data), "split": split if prepared else "all pairs"}
    estimator = fit_quality(predictor, items, about, degrade=degrade, progress=not quiet)
    _store(model, predictor.meta.with_quality(estimator))
    fitted = estimator.fitted_on
    typer.echo(f"quality estimate fitted on {fitted['images']} images ({fitted['samples']} "
               f"with degraded copies) -> stored in {model}")
    for kind, scores in fitted["in_sample"].items():
        auroc = "-" if scores["auroc"] is None else f"{scores['auroc']:.3f}"
        typer.echo(f"  {kind}: mean absolute error {scores['mean_absolute_error']:.3f}, "
                   f"AUROC for Jaccard < 0.65 {auroc} (on the images it was fitted on; "
                   "`dermaseg evaluate` judges it on others)")
