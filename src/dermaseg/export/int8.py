"""Static INT8 quantization with ONNX Runtime, how the INT8 model compares with float32, and
the whole INT8 export (float32 export and check, quantization, comparison, report).

Static (calibrated) QDQ quantization: per-channel int8 weights, uint8 activations whose ranges
come from running the float model on the user's images, prepared exactly like the Predictor
prepares them. ONNX Runtime fuses each DequantizeLinear -> Conv -> QuantizeLinear group into
an integer convolution on CPU. Dynamic quantization is not offered: it quantizes activations at
run time and ONNX Runtime has no fast dynamic path for convolutions (slower than float32).

The comparison reports file sizes, median CPU latency of both models at the model's input size
and the Dice agreement between float32 and INT8 masks (at the original image size) on images
that were NOT used for calibration.

Importing this module imports no PyTorch (`int8_siblings` serves the command's checks before
any model is loaded); the functions that write ONNX files import it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dermaseg.errors import DermasegError, UsageError
from dermaseg.infer.onnx_backend import INPUT_NAME, onnx_session
from dermaseg.model_meta import ModelMeta
from dermaseg.progress import progress as progress_bar


@dataclass
class Int8Options:
    quant_format: str = "qdq"  # "qdq" (QuantizeLinear/DequantizeLinear pairs) or "qoperator"
    per_channel: bool = True  # one weight scale per output channel (better accuracy)
    activations: str = "uint8"  # "uint8" (U8S8, the fast x86 path) or "int8"
    method: str = "minmax"  # calibration: "minmax", "entropy" or "percentile"
    fixed_batch: bool = False  # pin the batch dim to 1 (H, W stay dynamic)


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader over HxWx3 uint8 images, one (1, 3, S, S) at a time."""

    def __init__(self, images: list[np.ndarray], meta: ModelMeta, progress: bool = True) -> None:
        from dermaseg.preprocessing import Preprocessing

        self._prepare = Preprocessing.from_meta(meta)
        self._images = images
        self._bar = progress_bar(total=len(images), desc="calibrate", unit="image",
                                 enabled=progress)
        self._index, self._end = 0, len(images)

    def __len__(self) -> int:
        return len(self._images)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve images[start_index:end_index] next (ONNX Runtime's strided calibration)."""
        self._index, self._end = start_index, min(end_index, len(self._images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= self._end:
            if self._index >= len(self._images):
                self._bar.close()
            return None
        array, _ = self._prepare(self._images[self._index])
        self._index += 1
        self._bar.update(1)
        return {INPUT_NAME: array[None]}

    def rewind(self) -> None:
        self._index, self._end = 0, len(self._images)


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    return type("CalibrationReader", (ImageCalibrationReader, CalibrationDataReader), {})


def _ort_options(options: Int8Options):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    activations = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    for value, table, what in ((options.quant_format, formats, "format"),
                               (options.activations, activations, "activations"),
                               (options.method, methods, "calibration method")):
        if value not in table:
            raise UsageError(f"int8 {what} {value!r}: use one of {', '.join(table)}")
    return formats[options.quant_format], activations[options.activations], methods[options.method]


def _pin_batch(path: Path) -> None:
    import onnx

    proto = onnx.load(str(path))
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(path))


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  images: list[np.ndarray], meta: ModelMeta,
                  options: Int8Options | None = None, progress: bool = True) -> Path:
    """Calibrate on `images` and write a static INT8 model (with the dermaseg metadata).

    Raises:
        UsageError: no calibration image, or an unknown option value.
        DermasegError: ONNX Runtime cannot quantize the model, or the file cannot be written.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_static

    from dermaseg.export.onnx import save_onnx, set_metadata

    options = options or Int8Options()
    if not images:
        raise UsageError("int8: no calibration image (give --calib DIR with images)")
    quant_format, activation_type, method = _ort_options(options)
    with tempfile.TemporaryDirectory(prefix="dermaseg-int8-") as folder:
        pre, quantized = Path(folder) / "pre.onnx", Path(folder) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            if options.fixed_batch:
                _pin_batch(pre)
            quantize_static(
                str(pre), str(quantized), _reader_class()(images, meta, progress),
                quant_format=quant_format, per_channel=options.per_channel,
                activation_type=activation_type, weight_type=QuantType.QInt8,
                calibrate_method=method,
                # ranges are computed image by image and merged: memory stays at one image's
                # activations however many images calibrate
                extra_options={"CalibStridedMinMax": 1},
            )
        except Exception as exc:  # onnxruntime raises untyped errors
            raise DermasegError(f"{fp32_path}: INT8 quantization failed ({exc})") from exc
        proto = onnx.load(str(quantized))
    set_metadata(proto, meta)
    return save_onnx(proto, out_path)


@dataclass
class Int8Comparison:
    fp32_mb: float
    int8_mb: float
    size_ratio: float  # int8 / fp32
    fp32_ms: float  # median latency, batch 1 at image_size
    int8_ms: float
    speedup: float  # fp32_ms / int8_ms
    dice_mean: float  # agreement of fp32 and int8 masks, calibration-excluded images
    dice_min: float
    images: int

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"size     fp32 {self.fp32_mb:.2f} MB  int8 {self.int8_mb:.2f} MB "
            f"({100 * self.size_ratio:.0f} %)",
            f"latency  fp32 {self.fp32_ms:.1f} ms  int8 {self.int8_ms:.1f} ms "
            f"(x{self.speedup:.2f}, median, batch 1)",
            f"agreement Dice(fp32 mask, int8 mask) mean {self.dice_mean:.4f} "
            f"min {self.dice_min:.4f} on {self.images} images not used for calibration",
        ]


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (the ISIC convention: 1.0 when both are empty)."""
    from dermaseg.evaluation.metrics import image_metrics

    return float(image_metrics(a, b)["dice"])


def median_latency_ms(session, side: int, repeats: int = 10, warmup: int = 2) -> float:
    batch = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: batch})
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def compare_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                 images: list[np.ndarray], repeats: int = 10) -> Int8Comparison:
    """Sizes, median latency and mask agreement of two exports of the same model."""
    from dermaseg.infer.predictor import Predictor

    fp32, int8 = Predictor.load(Path(fp32_path)), Predictor.load(Path(int8_path))
    dices = [mask_dice(fp32.predict(image), int8.predict(image)) for image in images]
    side = fp32.meta.image_size
    fp32_ms = median_latency_ms(onnx_session(fp32_path), side, repeats)
    int8_ms = median_latency_ms(onnx_session(int8_path), side, repeats)
    fp32_mb = os.path.getsize(fp32_path) / 1e6
    int8_mb = os.path.getsize(int8_path) / 1e6
    return Int8Comparison(
        fp32_mb, int8_mb, int8_mb / fp32_mb, fp32_ms, int8_ms, fp32_ms / int8_ms,
        float(np.mean(dices)) if dices else float("nan"),
        float(np.min(dices)) if dices else float("nan"), len(images),
    )


def int8_siblings(output: Path) -> tuple[Path, Path]:
    """The float32 model and the report written beside an INT8 model OUT: STEM.fp32.onnx and
    STEM.report.json, STEM being OUT's name without .onnx and .int8.

    Raises:
        UsageError: OUT's name does not end in .onnx.
    """
    if output.suffix != ".onnx":
        raise UsageError(f"-o {output}: the INT8 model needs a name ending in .onnx")
    stem = output.name.removesuffix(".onnx").removesuffix(".int8")
    return output.with_name(stem + ".fp32.onnx"), output.with_name(stem + ".report.json")


def export_int8(model, meta: ModelMeta, output: Path, images: list[np.ndarray], *,
                opset: int, exporter: str, holdout: int = 8,
                options: Int8Options | None = None, repeats: int = 10,
                say: Callable[[str], None] = print) -> Int8Comparison:
    """Float32 export checked against PyTorch (int8_siblings), INT8 quantization calibrated
    on `images` but the last `holdout` (at most half), comparison on those, report.

    Raises:
        UsageError: an unknown exporter, an opset out of range, or OUT not ending in .onnx.
        DermasegError: any step fails; the files this run wrote are then removed (an
            unexpected error is wrapped, naming OUT and the original error).
    """
    from dermaseg.export.parity import discard, export_onnx_checked
    from dermaseg.fileio import write_json_atomic

    fp32_path, report = int8_siblings(output)
    export_onnx_checked(model, meta, fp32_path, images, opset, exporter, say=say)
    written = [fp32_path]
    try:
        held_out = max(1, min(holdout, len(images) // 2))
        calib, test = images[:-held_out], images[-held_out:]
        say(f"calibrating on {len(calib)} images, comparing on {len(test)} others")
        quantize_int8(fp32_path, output, calib, meta, options)
        written.append(output)
        comparison = compare_int8(fp32_path, output, test, repeats=repeats)
        for line in comparison.lines():
            say(line)
        write_json_atomic(report, {"fp32": str(fp32_path), "int8": str(output),
                                   **comparison.to_dict()})
    except BaseException as exc:
        discard(*written)
        if isinstance(exc, DermasegError) or not isinstance(exc, Exception):
            raise
        raise DermasegError(f"{output}: INT8 export failed, its files removed "
                            f"({type(exc).__name__}: {exc})") from exc
    say(f"wrote {output} (INT8), {fp32_path} (float32), {report}")
    return comparison
