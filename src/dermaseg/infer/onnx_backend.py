"""An exported model in use: validate an `.onnx` file and run it with ONNX Runtime.

The contract (written by `dermaseg.export.onnx`):

- input  "image":  float32 (N, 3, H, W), letterboxed and normalised like `Predictor.prepare`;
- output "logits": float32 (N, 1, H, W), before the sigmoid;
- metadata_props["dermaseg"]: json.dumps(ModelMeta.to_dict()).

Nothing here imports PyTorch: `dermaseg predict model.onnx` and `dermaseg serve model.onnx`
run without it (about 0.5 GB less memory and 2 s less start-up per process).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from dermaseg.errors import DermasegError, UsageError
from dermaseg.model_meta import ModelMeta

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
META_KEY = "dermaseg"


def check_onnx(path: str | os.PathLike) -> ModelMeta:
    """Validate an ONNX file before use: checker, input/output names and dermaseg metadata.

    Returns:
        The ModelMeta stored in the file.

    Raises:
        DermasegError: naming the file: missing, not ONNX, invalid graph, wrong input/output
            names or ranks, weights that are not finite (damaged), missing or malformed
            metadata.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DermasegError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, OSError, ValueError, RuntimeError) as exc:
        raise DermasegError(f"{path}: not a valid ONNX model ({str(exc).splitlines()[0]})") from exc
    except Exception as exc:  # protobuf DecodeError and friends
        raise DermasegError(f"{path}: not an ONNX file ({type(exc).__name__})") from exc
    _check_io(path, proto)
    _check_finite(path, proto)
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise DermasegError(f"{path}: no '{META_KEY}' metadata; export it with `dermaseg export`")
    try:
        data = json.loads(props[META_KEY])
    except json.JSONDecodeError as exc:
        raise DermasegError(f"{path}: '{META_KEY}' metadata is not JSON ({exc})") from exc
    return ModelMeta.from_dict(data, str(path))


def _check_io(path: Path, proto) -> None:
    initializers = {init.name for init in proto.graph.initializer}
    inputs = {v.name: v for v in proto.graph.input if v.name not in initializers}
    outputs = {v.name: v for v in proto.graph.output}
    for name, found, rank in ((INPUT_NAME, inputs, 4), (OUTPUT_NAME, outputs, 4)):
        if name not in found:
            raise DermasegError(f"{path}: expected a graph input/output named '{name}', "
                                f"found {', '.join(found) or 'none'}")
        tensor = found[name].type.tensor_type
        if tensor.elem_type != 1:  # TensorProto.FLOAT
            raise DermasegError(f"{path}: '{name}' must be float32")
        if len(tensor.shape.dim) != rank:
            raise DermasegError(f"{path}: '{name}' must have rank {rank}")
    if len(inputs) != 1:
        raise DermasegError(f"{path}: expected one input ('image'), found {', '.join(inputs)}")


FLOAT_TYPES = (1, 10, 11)  # TensorProto FLOAT, FLOAT16, DOUBLE


def _check_finite(path: Path, proto) -> None:
    """Raises DermasegError naming the floating-point weights (initializers stored in the
    file) that hold NaN or infinite values."""
    from onnx import TensorProto, numpy_helper

    bad = [init.name for init in proto.graph.initializer
           if init.data_type in FLOAT_TYPES and init.data_location != TensorProto.EXTERNAL
           and not np.isfinite(numpy_helper.to_array(init)).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise DermasegError(f"{path}: damaged: {len(bad)} weight tensor(s) hold NaN or "
                            f"infinite values ({shown}); export it again from its checkpoint")


def onnx_session(path: str | os.PathLike, threads: int | None = None, spin: bool = True):
    """An onnxruntime CPU session with full graph optimisation. spin=False stops its threads
    from busy-waiting after a run (fair timing beside other work)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(session, batch: np.ndarray) -> np.ndarray:
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})[0]
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def onnxruntime_has_cuda() -> bool:
    """Whether this onnxruntime has the CUDA execution provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def local_rank() -> int:
    """This process's GPU under torchrun (and other launchers that set LOCAL_RANK), else 0."""
    try:
        return max(0, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0


def onnx_providers(device: str) -> list:
    """ONNX Runtime execution providers for a device name: "auto" (CUDA when this
    onnxruntime has it, under torchrun LOCAL_RANK's GPU, else the CPU), "cpu", "cuda" or
    "cuda:N".

    Raises:
        UsageError: not such a name, or CUDA asked of an onnxruntime without it.
    """
    has_cuda = onnxruntime_has_cuda()
    name = str(device)
    if name == "cpu" or (name == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if name == "auto":
        name = f"cuda:{local_rank()}"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise UsageError(f"--device {device}: an ONNX model runs on auto, cpu, cuda or cuda:N")
    if not has_cuda:
        raise UsageError(f"--device {device}: this onnxruntime has no CUDA execution provider "
                         "(pip install onnxruntime-gpu), or use --device cpu")
    device_id = int(match.group(1) or 0)
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


# Operators of a quantized graph: static QDQ (`dermaseg export --int8`), QOperator, dynamic.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
FLOAT_NAMES = {10: "fp16", 16: "bf16"}  # TensorProto FLOAT16, BFLOAT16; else fp32


def onnx_precision(path: str | os.PathLike) -> str:
    """The number format an ONNX model computes in: "int8" when its graph holds quantization
    operators (QuantizeLinear/DequantizeLinear, QLinearConv, ...), "fp16"/"bf16" when its
    weights are stored so, else "fp32". Reads the graph only (no external weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(node.op_type in QUANTIZED_OPS for node in graph.node):
        return "int8"
    types = {init.data_type for init in graph.initializer}
    return next((name for code, name in FLOAT_NAMES.items() if code in types), "fp32")


class OnnxBackend:
    """An exported model checked by `check_onnx`: float32 (N, 3, H, W) numpy -> logits
    (N, 1, H, W) numpy. `fixed_side`/`max_batch`: the input's static side and batch, if any;
    `precision`: onnx_precision of the file."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DermasegError(f"{path}: not a readable ONNX model ({exc})") from exc
        shape = next(i for i in self.session.get_inputs() if i.name == INPUT_NAME).shape
        self.max_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_side = shape[-1] if isinstance(shape[-1], int) else None
        self.precision = onnx_precision(path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(batch)
        chunks = [batch[i:i + step] for i in range(0, len(batch), step)]
        parts = [np.asarray(self.session.run([OUTPUT_NAME],
                                             {INPUT_NAME: np.ascontiguousarray(chunk)})[0])
                 for chunk in chunks]
        return np.concatenate(parts).astype(np.float32, copy=False)
