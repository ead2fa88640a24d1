"""`dermaseg evaluate`: official ISIC metrics of a model, or of masks made elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from dermaseg.commands.options import (
    BATCH_SIZE,
    CRF,
    DEVICE,
    FILL_HOLES,
    KEEP_LARGEST,
    MIN_AREA,
    QUIET,
    TTA,
)
from dermaseg.errors import UsageError


def _print_overall(summary: dict, out: Path) -> None:
    overall, ci95 = summary["overall"], summary.get("ci95")
    typer.echo(f"{summary['images']} images (mean over images, ISIC conventions; 95% CI: "
               "bootstrap over images):")
    for name in ("threshold_jaccard", "jaccard", "dice", "sensitivity", "specificity",
                 "accuracy", "precision"):
        interval = ("no CI: 1 image" if ci95 is None
                    else f"95% CI {ci95[name][0]:.4f}-{ci95[name][1]:.4f}")
        typer.echo(f"  {name:<18} {overall[name]:.4f}  ({interval})")
    failures = summary["failures"]
    shown = ", ".join(failures["ids"][:10]) + (" ..." if len(failures["ids"]) > 10 else "")
    typer.echo(f"failures (Jaccard < {failures['below']}): {failures['count']} of "
               f"{summary['images']}" + (f": {shown}" if shown else ""))
    if summary.get("quality"):
        typer.echo(quality_line(summary["quality"]))
    typer.echo(f"report: {out / 'report.html'}")


def quality_line(stats: dict) -> str:
    """The quality estimate against the truth, in one line (see evaluation.quality_check)."""
    def number(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    head = (f"quality estimate: review recommended for {stats['flagged']} images, "
            f"{stats['failures_flagged']} of the {stats['failures']} failures among them")
    estimate = stats["estimate"]
    if estimate is None:
        return head + " (no fitted estimate: `dermaseg calibrate` fits one)"
    return (f"{head}; AUROC {number(estimate['auroc'])} (baseline "
            f"{number(stats['baseline']['auroc'])}), Spearman {number(estimate['spearman'])}, "
            f"mean absolute error {number(estimate['mean_absolute_error'])}")


def _default_out(model: str, name: str) -> Path:
    """MODEL's folder / NAME; for an ensemble, its members' common folder / NAME-ensemble;
    for a hub model (hf://), NAME in the current folder."""
    from dermaseg.infer.ensemble import split_models
    from dermaseg.model_folder import is_hub_name

    members = split_models(model)
    if any(is_hub_name(m) for m in members):
        return Path(f"{name}-ensemble" if len(members) > 1 else name)
    if len(members) == 1:
        return Path(model).parent / name
    common = os.path.commonpath([os.path.abspath(Path(m).parent) for m in members])
    return Path(common) / f"{name}-ensemble"


def _refuse_another_evaluation(out: Path, notes: list[str], overwrite: bool) -> None:
    """OUT's evaluation of another model, data or settings (its metrics.json "notes") is
    replaced only with `overwrite`."""
    try:
        earlier = json.loads((out / "metrics.json").read_text())["notes"][:len(notes)]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if overwrite or earlier == notes:
        return
    differ = next((old for old, new in zip(earlier, notes, strict=False) if old != new),
                  "its notes")
    raise UsageError(f"{out}: holds an evaluation of something else ({differ}); pass "
                     "--overwrite to replace it, or -o another folder")


def _training_images_note(predictor, split: str) -> str | None:
    """When the split holds images a model of this data trained on: a score to distrust."""
    from dermaseg.infer.ensemble import Ensemble

    fold = None if isinstance(predictor, Ensemble) else predictor.meta.config.data.fold
    if split == "train" or (fold is not None and split not in ("test", f"fold{fold}")):
        whose = "" if fold is None else f" (cross-validation fold {fold}: its own images are " \
            f"--split fold{fold})"
        return (f"split {split} holds images the model trained on if it was trained on this "
                f"data{whose}: the score is not a test score")
    return None


def _report_folder(model: str, data: Path, split: str, options: str = "") -> Path:
    """MODEL's folder / eval-SPLIT (eval-FOLDER for a raw pair folder), then OPTIONS."""
    prepared = (data / "manifest.json").is_file()
    name = f"eval-{split}" if prepared else f"eval-{data.resolve().name}"
    return _default_out(model, name + options)


def _options_name(tta: bool, keep_largest: bool, fill_holes: bool, min_area: int,
                  crf: bool) -> str:
    """"-tta-keep-largest-min-area50": the options that change the masks, in the name of the
    default report folder (so that evaluations with other options sit beside each other)."""
    parts = [("tta", tta), ("keep-largest", keep_largest), ("fill-holes", fill_holes),
             (f"min-area{min_area}", min_area > 0), ("crf", crf)]
    return "".join(f"-{name}" for name, on in parts if on)


def _model_evaluation(model: str, data: Path, split: str, out: Path, post, tta: bool,
                      batch_size: int, device: str, quiet: bool, overwrite: bool):
    """(Evaluation, notes) of MODEL on a prepared split or a raw pair folder."""
    from dermaseg.evaluation.evaluate import evaluate_model, source_items
    from dermaseg.infer.ensemble import describe_model, load_predictor
    from dermaseg.infer.tta import tta_config

    items, unpaired = source_items(data, split)
    predictor = load_predictor(model, device=device, tta=tta_config(tta, None),
                               batch_size=batch_size)
    prepared = (data / "manifest.json").is_file()
    notes = [describe_model(predictor, model),
             f"data: {data}" + (f" (split {split})" if prepared else ""),
             f"threshold {predictor.threshold}, TTA {'on' if tta else 'off'}, "
             f"post-processing: {post or 'none'}"]
    _refuse_another_evaluation(out, notes, overwrite)
    leak = _training_images_note(predictor, split) if prepared else None
    if leak:
        notes.append(leak)
        typer.echo(f"note: {leak}", err=True)
    if unpaired:
        shown = ", ".join(p.name for p in unpaired[:5]) + (", ..." if len(unpaired) > 5 else "")
        notes.append(f"{len(unpaired)} image(s) without a mask not scored: {shown}")
        typer.echo(f"note: {notes[-1]} (see `dermaseg data check {data}`)", err=True)
    return evaluate_model(predictor, items, post, progress=not quiet), notes


def evaluate(
    model: str = typer.Argument(None, help="Checkpoint (.ckpt), .onnx or .tflite model to "
                                "evaluate; a,b,c: the ensemble of several (mean probability)."),
    data: Path = typer.Option(None, "--data", help="Prepared dataset (or a raw pair folder)."),
    split: str = typer.Option(
        "test", "--split", help="Split of the prepared dataset: train, val, test, or foldK "
        "(fold K of `data prepare --folds`: a cross-validation model's own validation images)."),
    pred: Path = typer.Option(None, "--pred", help="Folder of <id>_segmentation.png predictions."),
    truth: Path = typer.Option(None, "--truth", help="Folder of <id>_segmentation.png truths."),
    images: Path = typer.Option(None, "--images", help="Images for the gallery (--pred mode)."),
    out: Path = typer.Option(None, "-o", "--out", help="Report folder (default: see above)."),
    tta: bool = TTA,
    keep_largest: bool = KEEP_LARGEST,
    fill_holes: bool = FILL_HOLES,
    min_area: int = MIN_AREA,
    crf: bool = CRF,
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    quiet: bool = QUIET,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT's evaluation of "
                                   "another model, data or settings."),
) -> None:
    """Dice, IoU, threshold-Jaccard, sensitivity, specificity, accuracy, precision.

    `evaluate MODEL --data DIR [--split test]` predicts each image at its original size and
    compares it with the original mask; report in MODEL's folder, eval-<split>/, unless -o.
    Options that change the masks name the folder: --tta --keep-largest writes
    eval-<split>-tta-keep-largest/.

    MODEL may be a comma list (a.ckpt,b.ckpt,...): their ensemble is evaluated; report in the
    members' common folder, eval-<split>-ensemble/, unless -o. DIR may also be a raw folder
    of image/mask pairs: then every pair is scored.

    `evaluate --pred PRED --truth TRUTH` scores existing masks; report in PRED-eval/ unless -o.

    Writes metrics.csv, metrics.json, report.md, report.html, jaccard_hist.png, gallery/; an
    evaluation of another model, data or settings already in OUT is kept unless --overwrite.
    Every mean comes with its 95% bootstrap interval over images (2000 resamples, seed 0).
    """
    from dermaseg.evaluation.evaluate import evaluate_folders
    from dermaseg.evaluation.files import check_output, write_evaluation
    from dermaseg.output_lock import output_lock

    if (pred is None) != (truth is None):
        raise UsageError("--pred and --truth go together")
    if pred is not None and (model is not None or data is not None):
        raise UsageError("give either MODEL --data DIR, or --pred and --truth, not both")
    if pred is None and (model is None or data is None):
        raise UsageError("give MODEL --data DIR, or --pred PRED --truth TRUTH")
    out = out or (pred.parent / f"{pred.name}-eval" if pred is not None
                  else _report_folder(model, data, split, _options_name(
                      tta, keep_largest, fill_holes, min_area, crf)))
    check_output(out)
    with output_lock(out, "evaluation"):
        if pred is not None:
            notes = [f"predictions: {pred}", f"truth: {truth}"]
            _refuse_another_evaluation(out, notes, overwrite)
            result = evaluate_folders(pred, truth, images, progress=not quiet)
        else:
            from dermaseg.infer.postprocess import postprocess_config

            post = postprocess_config(keep_largest, fill_holes, min_area, crf)
            result, notes = _model_evaluation(model, data, split, out, post, tta, batch_size,
                                              device, quiet, overwrite)
        for warning in result.warnings:
            notes.append(warning)
            typer.echo(f"note: {warning}", err=True)
        summary = write_evaluation(result, out, "dermaseg evaluation", notes)
    _print_overall(summary, out)
