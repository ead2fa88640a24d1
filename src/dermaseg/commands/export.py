"""`dermaseg export MODEL.ckpt --format onnx|tflite [--int8] [-o OUT]`: checked exports."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import typer

from dermaseg.errors import DermasegError, UsageError

SYNTH_SEED = 1234


def calibration_images(folder: Path | None, count: int, image_size: int,
                       progress: bool = True) -> tuple[list[np.ndarray], str]:
    """Up to `count` HxWx3 uint8 images: a seeded random sample of the image files under
    `folder` (masks excluded), or synthetic dermoscopy images when `folder` is None.

    Returns:
        (images, a description of where they came from)

    Raises:
        UsageError: the folder is missing or holds no readable image.
    """
    from tqdm import tqdm

    if count < 2:
        raise UsageError(f"--calib-count must be at least 2, got {count}")
    if folder is None:
        from dermaseg.data.synth import SynthOptions, synth_pair

        rng = np.random.default_rng(SYNTH_SEED)
        side = max(64, image_size)
        images = [synth_pair(rng, int(side * rng.uniform(0.8, 1.4)), side, SynthOptions())[0]
                  for _ in tqdm(range(count), desc="synth", disable=not progress)]
        return images, f"{count} synthetic images (dermaseg.data.synth)"
    from dermaseg.fileio import read_rgb
    from dermaseg.infer.batch import list_inputs

    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise UsageError(f"--calib {folder}: {what} (give a folder of images, or a folder "
                         "written by `dermaseg data prepare`)")
    if (folder / "manifest.json").is_file():
        return _prepared_images(folder, count)
    files, _ = list_inputs([str(folder)])
    if len(files) > count:
        picked = np.random.default_rng(0).choice(len(files), size=count, replace=False)
        files = [files[i] for i in sorted(picked)]
    images = []
    for path in tqdm(files, desc="read", disable=not progress):
        with contextlib.suppress(DermasegError):  # unreadable files are simply not used
            images.append(read_rgb(path))
    if len(images) < 2:
        raise UsageError(f"--calib {folder}: needs at least 2 readable images, found {len(images)}")
    return images, f"{len(images)} images from {folder}"


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


def _default_output(model: Path, fmt: str, int8: bool) -> Path:
    suffix = ".tflite" if fmt == "tflite" else (".int8.onnx" if int8 else ".onnx")
    return model.with_name(model.stem + suffix)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def export_onnx_checked(model, meta, path: Path, images, opset: int, exporter: str) -> float:
    """Export, run ONNX Runtime on `images` and compare with PyTorch; remove the file and
    raise if the largest probability difference exceeds PARITY_TOLERANCE."""
    from dermaseg.export import (
        PARITY_TOLERANCE,
        export_onnx,
        max_probability_difference,
        parity_batches,
    )

    export_onnx(model, meta, path, opset=opset, exporter=exporter)
    try:
        diff = max_probability_difference(model, path, parity_batches(images[:4], meta))
    except BaseException:  # an unchecked model is not left behind (error, Ctrl-C)
        _remove(path)
        raise
    typer.echo(f"{path}: max |p_onnx - p_torch| = {diff:.2e} (tolerance {PARITY_TOLERANCE:g})")
    if not diff <= PARITY_TOLERANCE:
        _remove(path)
        raise DermasegError(f"{path}: removed: ONNX Runtime differs from PyTorch by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE:g}); try --exporter legacy or another --opset")
    return diff


def _int8_siblings(output: Path) -> tuple[Path, Path]:
    """The float32 model and the report written beside an INT8 model OUT."""
    if output.suffix != ".onnx":
        raise UsageError(f"-o {output}: the INT8 model needs a name ending in .onnx")
    stem = output.name.removesuffix(".onnx").removesuffix(".int8")
    return output.with_name(stem + ".fp32.onnx"), output.with_name(stem + ".report.json")


def _check_options(fmt: str, opset: int, exporter: str, calib_count: int) -> None:
    """The option errors export_onnx and calibration_images would raise, before any work."""
    from dermaseg.export import check_export_options

    if fmt == "onnx":
        check_export_options(opset, exporter)
    if calib_count < 2:
        raise UsageError(f"--calib-count must be at least 2, got {calib_count}")


def _check_outputs(model: Path, output: Path, fmt: str, int8: bool, overwrite: bool) -> None:
    """Refuse to write over the checkpoint, and over earlier files unless `overwrite`."""
    paths = [output, *(_int8_siblings(output) if int8 else ()),
             *([output.with_name(output.name + ".json")] if fmt == "tflite" else [])]
    if any(path.resolve() == model.resolve() for path in paths):
        raise UsageError(f"-o {output}: that is the checkpoint being exported")
    folders = [str(path) for path in paths if path.is_dir()]
    if folders:
        raise UsageError(f"{', '.join(folders)}: a folder; -o takes the file to write")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise UsageError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}"
                         "; pass --overwrite to replace (or another -o)")


def _int8(model, meta, output: Path, images, opset, exporter, holdout, per_tensor, repeats):
    """fp32 export, INT8 quantization, comparison and report; on any failure the files this
    run wrote are removed."""
    from dermaseg.fileio import write_json_atomic
    from dermaseg.quantize import Int8Options, compare_int8, quantize_int8

    fp32_path, report = _int8_siblings(output)
    export_onnx_checked(model, meta, fp32_path, images, opset, exporter)
    written = [fp32_path]
    try:
        held_out = max(1, min(holdout, len(images) // 2))
        calib, test = images[:-held_out], images[-held_out:]
        typer.echo(f"calibrating on {len(calib)} images, comparing on {len(test)} others")
        quantize_int8(fp32_path, output, calib, meta, Int8Options(per_channel=not per_tensor))
        written.append(output)
        comparison = compare_int8(fp32_path, output, test, repeats=repeats)
        for line in comparison.lines():
            typer.echo(line)
        write_json_atomic(report, {"fp32": str(fp32_path), "int8": str(output),
                                   **comparison.to_dict()})
    except BaseException as exc:
        for path in written:
            _remove(path)
        if isinstance(exc, DermasegError) or not isinstance(exc, Exception):
            raise
        raise DermasegError(f"{output}: INT8 export failed, its files removed "
                            f"({type(exc).__name__}: {exc})") from exc
    typer.echo(f"wrote {output} (INT8), {fp32_path} (float32), {report}")


def export(
    model: Path = typer.Argument(..., help="A dermaseg checkpoint (.ckpt)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or tflite."),
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier exported files."),
) -> None:
    """Export a checkpoint to ONNX (float32, or static INT8) or TFLite, checked against PyTorch.

    With --int8, OUT is the INT8 model; the float32 model is written beside it as
    STEM.fp32.onnx and the comparison (size, latency, mask Dice) as STEM.report.json, STEM
    being OUT's name without .onnx and .int8 (-o model.int8.onnx: model.fp32.onnx).
    Files already there are kept unless --overwrite.
    """
    from dermaseg.checkpoint import load_model
    from dermaseg.infer.ensemble import refuse_model_list

    refuse_model_list(model, "export")
    if fmt not in ("onnx", "tflite"):
        raise UsageError(f"--format {fmt}: use onnx or tflite")
    if int8 and fmt != "onnx":
        raise UsageError("--int8 is for --format onnx")
    if model.suffix.lower() == ".onnx":
        raise UsageError(f"{model}: export starts from a checkpoint (.ckpt), not an ONNX file")
    if fmt == "tflite":
        from dermaseg.export import require_litert

        require_litert()  # before loading the model and making calibration images
    output = output or _default_output(model, fmt, int8)
    _check_outputs(model, output, fmt, int8, overwrite)
    _check_options(fmt, opset, exporter, calib_count)
    net, meta = load_model(model)
    images, source = calibration_images(calib, calib_count, meta.image_size)
    typer.echo(f"checking on {source}")
    if int8 and calib is None:
        typer.echo("note: INT8 scales calibrated on synthetic images; pass --calib with your "
                   "own images (or the prepared dataset) for a model trained on real ones")
    if fmt == "tflite":
        _tflite(net, meta, output, images)
    elif int8:
        _int8(net, meta, output, images, opset, exporter, holdout, per_tensor, repeats)
    else:
        export_onnx_checked(net, meta, output, images, opset, exporter)
        typer.echo(f"wrote {output}")


def _tflite(net, meta, output: Path, images) -> None:
    from dermaseg.export import PARITY_TOLERANCE, export_tflite, parity_batches

    batch = parity_batches(images[:4], meta)[0]
    diff = export_tflite(net, meta, output, batch)
    typer.echo(f"{output}: max |p_tflite - p_torch| = {diff:.2e} (tolerance {PARITY_TOLERANCE:g})")
    if not diff <= PARITY_TOLERANCE:
        _remove(output)
        _remove(output.with_name(output.name + ".json"))
        raise DermasegError(f"{output}: removed: TFLite differs from PyTorch by {diff:.2e}")
    typer.echo(f"wrote {output} (input 1x3x{meta.image_size}x{meta.image_size}) and "
               f"{output.name}.json (the preprocessing metadata)")
