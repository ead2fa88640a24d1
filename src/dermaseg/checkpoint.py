"""What a checkpoint holds and how to read one without running code from it.

A checkpoint (`best.ckpt`, `last.ckpt`, or a file written by `save_checkpoint`) is a dict with:
- "state_dict": the model's weights (keys may carry a "model." prefix from Lightning);
- "dermaseg": {"config": resolved Config dict, "image_size", "mean", "std", "threshold",
  "version"}: everything needed to rebuild the model and its preprocessing.
Lightning's own keys (optimizer, loops, callbacks) may sit beside them for resuming.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermaseg.errors import DermasegError, UsageError
from dermaseg.fileio import atomic_path
from dermaseg.model_folder import WEIGHTS, check_model_path, read_folder_meta, resolve_model
from dermaseg.model_meta import ModelMeta, folder_error

HEAD_BYTES = 1 << 16  # enough for the first pickle of a protocol 0/1 file


def _looks_like_pickle(head: bytes) -> bool:
    """A pickle (torch's legacy format is one): protocol 2+ opens with PROTO, 0 and 1 are
    checked by walking the opcodes (pickletools reads them, it runs nothing)."""
    if head[:1] == b"\x80":
        return head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    try:
        for _ in pickletools.genops(io.BytesIO(head)):
            pass
    except Exception:  # genops raises several types on bytes that are not a pickle
        return False
    return True


def _check_container(path: Path) -> None:
    """Raises DermasegError unless the file is a zip archive (torch.save) or a pickle."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise DermasegError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not head:
        raise DermasegError(f"{path}: not a PyTorch checkpoint file (the file is empty)")
    if not head.startswith(b"PK\x03\x04") and not _looks_like_pickle(head):
        raise DermasegError(f"{path}: not a PyTorch checkpoint file (neither a zip archive nor "
                            "a pickle; `dermaseg train` writes .ckpt files)")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a file that would run code is refused, and so is
    one whose weights or optimiser state hold NaN or infinite values (damaged bytes).

    Raises:
        DermasegError: the file is missing, not a checkpoint, contains pickled code, or is
            damaged (non-finite tensors).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise folder_error(path, "checkpoint file")
    _check_container(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DermasegError(
            f"{path}: refused: the file holds objects other than tensors and plain data "
            f"(loading it could run code). ({str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise DermasegError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(data, dict) or "state_dict" not in data or "dermaseg" not in data:
        raise DermasegError(f"{path}: not a dermaseg checkpoint (no 'state_dict'/'dermaseg')")
    refuse_non_finite({key: data.get(key) for key in FINITE_PARTS}, path)
    return data


WEIGHT_AVERAGE = "weight_average"  # last.ckpt of a train.ema_decay run: the training weights
# Not Lightning's callback states: they may hold inf.
FINITE_PARTS = ("state_dict", "optimizer_states", WEIGHT_AVERAGE)


def refuse_non_finite(tensors: dict[str, Any], path: Path) -> None:
    """Raises DermasegError naming `path` and the first tensors (nested dicts and lists
    searched) that hold NaN or infinite values: damaged bytes, or a run that diverged."""
    bad = non_finite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise DermasegError(f"{path}: damaged: {len(bad)} tensor(s) hold NaN or "
                            f"infinite values ({shown}); the file was corrupted, or saved "
                            "from a run that diverged. Use another checkpoint")


def non_finite_tensors(value: Any, name: str = "") -> list[str]:
    """Names ("state_dict/conv.weight") of the floating-point tensors in nested dicts and
    lists whose values are not all finite."""
    if torch.is_tensor(value):
        return [] if _finite(value) else [name]
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, (list, tuple)) else ())
    return [bad for key, inner in items
            for bad in non_finite_tensors(inner, f"{name}/{key}" if name else str(key))]


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's weights, with Lightning's "model." prefix removed."""
    state = checkpoint["state_dict"]
    if any(key.startswith("model.") for key in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint or a model folder (a local path or
    hf://owner/name, `dermaseg.model_folder`); returns (model in eval mode, ModelMeta)."""
    from dermaseg.models.factory import build_model

    path = resolve_model(path)
    if path.is_dir():
        check_model_path(path)
        meta, _ = read_folder_meta(path)
        state = read_safetensors(path / WEIGHTS)
    else:
        checkpoint = read_checkpoint(path)
        meta = ModelMeta.from_dict(checkpoint["dermaseg"], str(path))
        state = model_state_dict(checkpoint)
    model_config = meta.config.model.updated(pretrained=None, weights=None)  # never fetched
    model = build_model(model_config)
    misfit = _misfit(model.state_dict(), state)
    if misfit:
        raise DermasegError(f"{path}: weights do not fit the model in its config "
                            f"({model_config.arch}, {model_config.backbone}): {misfit}")
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Raises: DermasegError naming the file when it is not a readable safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise DermasegError(f"{path}: not a readable safetensors file ({exc})") from exc
    refuse_non_finite(state, path)
    return state


def _misfit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """'' when `state` fits `own` exactly, else counts of the keys that do not, with examples."""
    shared = own.keys() & state.keys()
    kinds = {
        "missing from the file": sorted(own.keys() - state.keys()),
        "not in the model": sorted(state.keys() - own.keys()),
        "of another shape": sorted(k for k in shared if own[k].shape != state[k].shape),
    }
    return "; ".join(f"{len(keys)} weights {kind} (e.g. {', '.join(keys[:3])})"
                     for kind, keys in kinds.items() if keys)


NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinite value (numpy's check is ~10x faster than torch's on the CPU)."""
    if not tensor.is_floating_point():
        return True
    if tensor.device.type == "cpu" and tensor.dtype in NUMPY_FLOATS:
        return bool(np.isfinite(tensor.detach().numpy()).all())
    return bool(torch.isfinite(tensor).all())


def torch_save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temp file, then rename: the previous file stays whole on any failure.

    Raises:
        DermasegError: the file cannot be written (disk full, no permission ...).
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise DermasegError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from exc
    except RuntimeError as exc:  # torch's zip writer reports a failed write (ENOSPC) this way
        free = shutil.disk_usage(Path(path).parent).free
        raise DermasegError(f"{path}: cannot write checkpoint (write failed with {free} bytes "
                            f"free on that disk: disk full?; {str(exc).splitlines()[0]})") from exc


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: ModelMeta) -> None:
    """Write a minimal inference checkpoint atomically.

    Raises:
        DermasegError: the file cannot be written; an earlier file at `path` is left as it was.
    """
    torch_save_atomic({"state_dict": model.state_dict(), "dermaseg": meta.to_dict()}, path)


def write_meta(path: str | Path, meta: ModelMeta) -> None:
    """Replace the metadata of the checkpoint at `path` (weights and any training state kept),
    atomically: e.g. to store its fitted quality estimator.

    Raises:
        DermasegError: the file is not a readable checkpoint, or cannot be written.
    """
    checkpoint = read_checkpoint(path)
    checkpoint["dermaseg"] = meta.to_dict()
    torch_save_atomic(checkpoint, path)
