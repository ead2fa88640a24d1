"""Export a trained model to ONNX with the dermaseg metadata (float32; INT8 in `int8`).

The ONNX contract is `dermaseg.infer.onnx_backend`'s (which reads and runs the files without
PyTorch):
input "image" (N, H and W dynamic; the model was trained at `image_size`, its natural input),
output "logits", and metadata_props["dermaseg"] (architecture config, input size, mean/std and
threshold), so that the `.onnx` file alone is enough to predict. The check against PyTorch is
`dermaseg.export.parity`'s.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import atomic_path
from dermaseg.infer.onnx_backend import INPUT_NAME, META_KEY, OUTPUT_NAME
from dermaseg.model_meta import ModelMeta

DEFAULT_OPSET = 18


class LogitsOnly(torch.nn.Module):
    """Wraps a model whose forward may return {"mask": logits, "edge": ...} (an edge head with
    `return_edge` set); returns the mask logits only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        return out["mask"] if isinstance(out, dict) else out


def _dynamo_export(model: torch.nn.Module, sample: torch.Tensor, opset: int):
    auto = torch.export.Dim.AUTO
    program = torch.onnx.export(
        model, (sample,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=opset, dynamo=True, optimize=True, verbose=False,
        dynamic_shapes={"image": {0: auto, 2: auto, 3: auto}},
    )
    if program is None:  # torch returns None only for the legacy exporter (dynamo=False)
        raise DermasegError("the dynamo ONNX exporter returned no program")
    return program.model_proto


def _legacy_export(model: torch.nn.Module, sample: torch.Tensor, opset: int, path: Path):
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (sample,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=False,
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )
    return onnx.load(str(path))


def _opset(proto) -> int:
    """The version of the default ("ai.onnx") operator set the graph uses."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _exported(name: str, export, opset: int, errors: list[str]):
    """Run one exporter; its model, or None with the reason appended to `errors` (an
    exception, or a model at another opset than asked: the dynamo exporter writes opset 18
    when it cannot convert down, and says so only in a log)."""
    try:
        proto = export()
    except Exception as exc:  # the exporters raise many unrelated types
        errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc)}")
        return None
    if _opset(proto) != opset:
        errors.append(f"{name}: wrote opset {_opset(proto)}, not the requested {opset}")
        return None
    return proto


def _rename_dims(proto) -> None:
    """Give the symbolic dims of the graph's input and output readable names everywhere, and
    the output its fixed single channel (the legacy exporter leaves it symbolic)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[i].dim_param: name for i, name in ((0, "batch"), (2, "height"), (3, "width"))
             if dims[i].dim_param}
    values = list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info)
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for value in proto.graph.output:  # one channel, whatever name the exporter gave it
        if len(value.type.tensor_type.shape.dim) == 4:
            value.type.tensor_type.shape.dim[1].dim_value = 1


def set_metadata(proto, meta: ModelMeta) -> None:
    """Store the preprocessing contract under metadata_props["dermaseg"] (replacing it)."""
    for index in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[index].key == META_KEY:
            del proto.metadata_props[index]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta.to_dict())
    proto.producer_name = "dermaseg"
    proto.doc_string = "dermaseg lesion segmentation: image (N,3,H,W) -> logits (N,1,H,W)"


def save_onnx(proto, path: str | os.PathLike) -> Path:
    """Check the model with onnx.checker and write it atomically."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise DermasegError(f"{path}: the exported graph fails onnx.checker ({exc})") from exc
    try:
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
    except OSError as exc:
        raise DermasegError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def check_export_options(opset: int, exporter: str) -> None:
    """Raises: UsageError for an unknown exporter, or an opset below 13 or above what the
    installed onnx knows."""
    import onnx

    if exporter not in ("auto", "dynamo", "legacy"):
        raise UsageError(f"--exporter {exporter}: use auto, dynamo or legacy")
    newest = onnx.defs.onnx_opset_version()
    if not 13 <= opset <= newest:
        raise UsageError(f"--opset {opset}: dermaseg exports opsets 13 to {newest} (the newest "
                         "the installed onnx knows)")


def export_onnx(model: torch.nn.Module, meta: ModelMeta, path: str | os.PathLike, *,
                opset: int = DEFAULT_OPSET, exporter: str = "auto") -> Path:
    """Export to ONNX with dynamic batch, height and width and the dermaseg metadata.

    Args:
        exporter: "dynamo" (torch.export based, the default of recent PyTorch), "legacy"
            (TorchScript tracing), or "auto": dynamo, falling back to legacy if it fails.

    Raises:
        UsageError: an unknown exporter or an opset out of range (check_export_options).
        DermasegError: neither exporter handles the model, or the file cannot be written.
    """
    check_export_options(opset, exporter)
    wrapped = LogitsOnly(model).eval()
    sample = torch.zeros(1, 3, meta.image_size, meta.image_size)
    path = Path(path)
    proto, errors = None, []
    # dynamo writes opset 18 and converts down, noisily and often not at all: auto goes legacy
    if exporter == "dynamo" or (exporter == "auto" and opset >= DEFAULT_OPSET):
        proto = _exported("dynamo", lambda: _dynamo_export(wrapped, sample, opset), opset, errors)
    if proto is None and exporter in ("auto", "legacy"):
        with tempfile.TemporaryDirectory() as folder:
            proto = _exported("legacy", lambda: _legacy_export(
                wrapped, sample, opset, Path(folder) / "legacy.onnx"), opset, errors)
    if proto is None:
        raise DermasegError(f"{path}: ONNX export failed ({'; '.join(errors)})")
    _rename_dims(proto)
    set_metadata(proto, meta)
    return save_onnx(proto, path)


def write_onnx_meta(path: str | os.PathLike, meta: ModelMeta) -> None:
    """Replace the dermaseg metadata of the ONNX model at `path`, atomically.

    Raises:
        DermasegError: the file is not a readable ONNX model, or cannot be written.
    """
    import onnx

    try:
        proto = onnx.load(str(path))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise DermasegError(f"{path}: not a readable ONNX model ({exc})") from exc
    set_metadata(proto, meta)
    save_onnx(proto, path)
