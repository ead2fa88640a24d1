"""`dermaseg export MODEL --format onnx|tflite|folder [--int8] [-o OUT]`: checked exports."""

from __future__ import annotations

from pathlib import Path

import typer

from dermaseg.errors import UsageError


def _default_output(model: Path, fmt: str, int8: bool) -> Path:
    if fmt == "folder":
        return model.with_name(f"{model.stem}-shared")
    suffix = ".tflite" if fmt == "tflite" else (".int8.onnx" if int8 else ".onnx")
    return model.with_name(model.stem + suffix)


def _export_folder(model: Path, output: Path, card_eval: Path | None, card_license: str,
                   overwrite: bool) -> None:
    """--format folder: weights, metadata and model card (`dermaseg.export.folder`)."""
    from dermaseg.checkpoint import load_model
    from dermaseg.export.card import read_evaluation
    from dermaseg.export.folder import check_folder_output, export_folder, training_data

    if output.resolve() == model.resolve():
        raise UsageError(f"-o {output}: that is the model being exported")
    check_folder_output(output, overwrite)
    evaluation = read_evaluation(card_eval) if card_eval is not None else None
    net, meta = load_model(model)
    export_folder(net, meta, output, training=training_data(model), evaluation=evaluation,
                  license=card_license, say=typer.echo)
    if evaluation is None:
        typer.echo("note: no --card-eval: the model card states no metrics")


def _check_options(fmt: str, opset: int, exporter: str, calib_count: int) -> None:
    """The option errors export_onnx and calibration_images would raise, before any work."""
    from dermaseg.export.calibration import check_calibration_count
    from dermaseg.export.onnx import check_export_options

    if fmt == "onnx":
        check_export_options(opset, exporter)
    check_calibration_count(calib_count)


def _check_outputs(model: Path, output: Path, fmt: str, int8: bool, overwrite: bool) -> None:
    """Refuse a name no command reads as this kind of model, to write over the checkpoint, and
    over earlier files unless `overwrite`."""
    from dermaseg.export.int8 import int8_siblings
    from dermaseg.model_meta import check_export_name

    if output.resolve() == model.resolve():
        raise UsageError(f"-o {output}: that is the checkpoint being exported")
    if output.is_dir():
        raise UsageError(f"{output}: a folder; -o takes the file to write")
    check_export_name(output, fmt)
    paths = [output, *(int8_siblings(output) if int8 else ()),
             *([output.with_name(output.name + ".json")] if fmt == "tflite" else [])]
    folders = [str(path) for path in paths if path.is_dir()]
    if folders:
        raise UsageError(f"{', '.join(folders)}: a folder; -o takes the file to write")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise UsageError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}"
                         "; pass --overwrite to replace (or another -o)")


def export(
    model_name: str = typer.Argument(..., metavar="MODEL", help="A dermaseg checkpoint (.ckpt) "
                                     "or model folder (a path or hf://owner/name)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, tflite or folder (for sharing: "
                            "safetensors weights, metadata, model card)."),
    int8: bool = typer.Option(False, "--int8", help="Static INT8 (ONNX Runtime, QDQ)."),
    calib: Path = typer.Option(
        None, "--calib",
        help="Images for calibration and checks: a prepared dataset (its train split) or any "
             "folder of images; default: synthetic images.",
    ),
    output: Path = typer.Option(None, "-o", "--output", help="Output file."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 13)."),
    exporter: str = typer.Option("auto", "--exporter", help="auto, dynamo or legacy."),
    calib_count: int = typer.Option(32, "--calib-count", help="Images to read from --calib."),
    holdout: int = typer.Option(8, "--holdout", min=1,
                                help="Images kept out of calibration for the fp32/INT8 "
                                     "agreement."),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="One scale per weight tensor."),
    repeats: int = typer.Option(10, "--repeats", min=1,
                                help="Timed runs for the latency median."),
    card_eval: Path = typer.Option(None, "--card-eval", help="--format folder: the metrics.json "
                                   "of `dermaseg evaluate` whose numbers the model card states."),
    card_license: str = typer.Option("apache-2.0", "--license", help="--format folder: the "
                                     "licence in the model card (a hub licence id)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier exported files."),
) -> None:
    """Export a model to ONNX (float32, or static INT8) or TFLite, checked against PyTorch, or
    to a model folder for sharing.

    With --int8, OUT is the INT8 model; the float32 model is written beside it as
    STEM.fp32.onnx and the comparison (size, latency, mask Dice) as STEM.report.json, STEM
    being OUT's name without .onnx and .int8 (-o model.int8.onnx: model.fp32.onnx).
    Files already there are kept unless --overwrite.

    --format folder writes OUT/ (default: STEM-shared/ beside the checkpoint) with
    model.safetensors, dermaseg.json and a model card README.md, for `hf upload OWNER/NAME OUT`;
    every command takes that folder (or hf://OWNER/NAME) as its model.
    """
    from dermaseg.infer.ensemble import refuse_model_list
    from dermaseg.model_folder import is_hub_name, resolve_model
    from dermaseg.output_lock import output_lock

    refuse_model_list(model_name, "export")
    if fmt not in ("onnx", "tflite", "folder"):
        raise UsageError(f"--format {fmt}: use onnx, tflite or folder")
    if int8 and fmt != "onnx":
        raise UsageError("--int8 is for --format onnx")
    if output is None and is_hub_name(model_name):
        raise UsageError(f"{model_name}: give -o OUT (the default is beside the model, here "
                         "in the hub's cache)")
    model = resolve_model(model_name)
    if fmt == "folder":
        output = output or _default_output(model, fmt, int8)
        with output_lock(output.parent, "export", name=f".{output.name[:100]}.lock"):
            _export_folder(model, output, card_eval, card_license, overwrite)
        return
    if model.suffix.lower() == ".onnx":
        raise UsageError(f"{model}: export starts from a checkpoint (.ckpt), not an ONNX file")
    if fmt == "tflite":
        from dermaseg.export.tflite import require_litert

        require_litert()  # before loading the model and making calibration images
    output = output or _default_output(model, fmt, int8)
    _check_options(fmt, opset, exporter, calib_count)
    with output_lock(output.parent, "export", name=f".{output.name[:100]}.lock"):
        _check_outputs(model, output, fmt, int8, overwrite)
        _export(model, fmt, int8, calib, output, opset, exporter, calib_count, holdout,
                per_tensor, repeats)


def _export(model: Path, fmt: str, int8: bool, calib: Path | None, output: Path, opset: int,
            exporter: str, calib_count: int, holdout: int, per_tensor: bool,
            repeats: int) -> None:
    from dermaseg.checkpoint import load_model
    from dermaseg.export.calibration import calibration_images

    net, meta = load_model(model)
    images, source = calibration_images(calib, calib_count, meta.image_size)
    typer.echo(f"checking on {source}")
    if int8 and calib is None:
        typer.echo("note: INT8 scales calibrated on synthetic images; pass --calib with your "
                   "own images (or the prepared dataset) for a model trained on real ones")
    if fmt == "tflite":
        from dermaseg.export.tflite import export_tflite_checked

        export_tflite_checked(net, meta, output, images, say=typer.echo)
    elif int8:
        from dermaseg.export.int8 import Int8Options, export_int8

        export_int8(net, meta, output, images, opset=opset, exporter=exporter, holdout=holdout,
                    options=Int8Options(per_channel=not per_tensor), repeats=repeats,
                    say=typer.echo)
    else:
        from dermaseg.export.parity import export_onnx_checked

        export_onnx_checked(net, meta, output, images, opset, exporter, say=typer.echo)
        typer.echo(f"wrote {output}")
