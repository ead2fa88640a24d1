"""A model folder for sharing (`dermaseg.model_folder` describes it): safetensors weights with
the metadata in their header, dermaseg.json, and a model card. Checked by reading the weights
back: every tensor equal to the model's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dermaseg.errors import DermasegError, UsageError
from dermaseg.export.card import card_text
from dermaseg.fileio import staged_outputs, write_bytes_atomic, write_json_atomic
from dermaseg.model_folder import CARD, FILES, FORMAT, HEADER_KEY, META, WEIGHTS, read_folder_meta
from dermaseg.model_meta import ModelMeta


def training_data(source: Path) -> dict[str, Any] | None:
    """The prepared data a checkpoint was trained on (split fingerprint, folds), from the run
    folder's data.json beside it (a model folder keeps it in its metadata); None if unknown.
    The local path is left out: it means nothing elsewhere."""
    if source.is_dir():
        return read_folder_meta(source)[1].get("training_data")
    try:
        record = json.loads((source.parent / "data.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("fingerprint"):
        return None
    return {"fingerprint": record["fingerprint"], "folds": record.get("folds")}


def check_folder_output(out: Path, overwrite: bool) -> None:
    """Raises UsageError when OUT is a file, or holds a model folder's files and not
    `overwrite`."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: a file; --format folder writes a folder")
    existing = [str(out / name) for name in FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{', '.join(existing)}: already there; pass --overwrite to replace "
                         "(or another -o)")


def export_folder(model: torch.nn.Module, meta: ModelMeta, out: Path, *,
                  training: dict[str, Any] | None = None,
                  evaluation: dict[str, Any] | None = None, license: str = "apache-2.0",
                  say: Callable[[str], None] = print) -> None:
    """Write the model folder OUT (its three files appear together, or none).

    Raises:
        DermasegError: a write fails, or the weights read back differ.
    """
    metadata = {"format": FORMAT, **meta.to_dict(), "training_data": training}
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    name = out.absolute().name
    with staged_outputs(out, FILES, "model folder") as stage:
        from safetensors.torch import load_file, save_file

        save_file(state, str(stage / WEIGHTS),
                  metadata={HEADER_KEY: json.dumps(metadata), "format": "pt"})
        write_json_atomic(stage / META, metadata)
        card = card_text(name, meta, training, evaluation, license)
        write_bytes_atomic(stage / CARD, card.encode())
        back = load_file(str(stage / WEIGHTS))
        if back.keys() != state.keys() or not all(torch.equal(back[k], state[k]) for k in state):
            raise DermasegError(f"{out / WEIGHTS}: the weights read back differ from the model's")
    say(f"wrote {out}/ ({WEIGHTS}, {META}, {CARD}); checked: {len(state)} tensors read back "
        "equal")
