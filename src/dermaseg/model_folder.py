"""A model folder meant for sharing, and the one place a model name becomes a local path.

    my-model/
      model.safetensors   the weights; the metadata below also in its header ("dermaseg": JSON)
      dermaseg.json       config (the recipe), image_size, mean, std, threshold, version, and
                          training_data (split fingerprint and folds) when it was known
      README.md           the model card: YAML front matter that model hubs read, then text

`dermaseg export CKPT --format folder -o my-model/` writes one (`dermaseg.export.folder`).
Wherever a model is named (predict, evaluate, export, serve), `resolve_model` takes a file, such
a folder, or `hf://owner/name[@revision]`: a folder on the Hugging Face Hub, fetched into its
cache (`dermaseg.hub`). Torch-free: the weights are read by `dermaseg.checkpoint`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dermaseg.errors import DermasegError, UsageError
from dermaseg.hub import HUB_PREFIX, fetch_snapshot
from dermaseg.model_meta import ModelMeta

WEIGHTS = "model.safetensors"
META = "dermaseg.json"
CARD = "README.md"
FILES = (WEIGHTS, META, CARD)
HEADER_KEY = "dermaseg"  # the safetensors header's metadata entry holding META's content
FORMAT = "dermaseg-model-folder"


def is_hub_name(spec: str | os.PathLike) -> bool:
    return str(spec).startswith(HUB_PREFIX)


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file()


def resolve_model(spec: str | os.PathLike) -> Path:
    """The local path of a model named by the user: `hf://owner/name[@revision]` is fetched
    (or found in the hub's cache); anything else is a local path, returned as given.

    Raises:
        DermasegError: a hub model that can be neither downloaded nor found in the cache.
    """
    if not is_hub_name(spec):
        return Path(spec)
    folder = fetch_snapshot(str(spec), FILES)
    if not (folder / WEIGHTS).is_file():
        raise DermasegError(f"{spec}: the repository has no {WEIGHTS}: not a dermaseg model "
                            "folder (`dermaseg export CKPT --format folder` makes one)")
    return folder


def weights_file(path: Path) -> Path:
    """The file holding a model's weights: the folder's model.safetensors, or the file."""
    return path / WEIGHTS if is_model_folder(path) else path


def read_folder_meta(folder: Path) -> tuple[ModelMeta, dict[str, Any]]:
    """(ModelMeta, the whole metadata dict) of a model folder, from the safetensors header
    (dermaseg.json when the header has none).

    Raises:
        DermasegError: naming the file: unreadable, or incomplete metadata.
    """
    data = _header_meta(folder / WEIGHTS)
    where = folder / WEIGHTS
    if data is None:
        where = folder / META
        try:
            data = json.loads(where.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DermasegError(f"{folder}: no dermaseg metadata (neither in {WEIGHTS}'s header "
                                f"nor a {META}): not a dermaseg model folder") from None
        except (OSError, ValueError) as exc:
            raise DermasegError(f"{where}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DermasegError(f"{where}: dermaseg metadata is not a JSON object")
    return ModelMeta.from_dict(data, str(where)), data


def _header_meta(path: Path) -> dict[str, Any] | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError) as exc:
        raise DermasegError(f"{path}: not a readable safetensors file ({exc})") from exc
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DermasegError(f"{path}: the header's {HEADER_KEY!r} entry is not JSON "
                            f"({exc})") from exc


def check_model_path(path: Path) -> None:
    """Raises UsageError / DermasegError when `path` is neither a model file nor a model
    folder (a run folder is pointed to its best.ckpt)."""
    if not path.exists():
        raise UsageError(f"{path}: no such model file or folder")
    if path.is_dir() and not is_model_folder(path):
        inside = [path / name for name in ("best.ckpt", "last.ckpt") if (path / name).is_file()]
        hint = f"give the file, e.g. {inside[0]}" if inside else \
            "give a .ckpt, .onnx or .tflite file"
        raise DermasegError(f"{path}: a folder without {WEIGHTS}, not a model folder; {hint}")
