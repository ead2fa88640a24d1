"""What a model needs besides its weights: config, input size, normalisation, threshold.

Stored in a checkpoint under "dermaseg" and in an ONNX export's metadata; torch-free, so an
exported model is used without importing PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermaseg import __version__
from dermaseg.config import Config
from dermaseg.config_io import INFERENCE_FIELDS, config_from_dict
from dermaseg.errors import DermasegError, UsageError
from dermaseg.quality import QualityEstimator


@dataclass
class ModelMeta:
    config: Config
    image_size: int
    mean: list[float]
    std: list[float]
    threshold: float
    version: str
    quality: QualityEstimator | None = None  # the mask quality estimate (dermaseg.quality)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "config": self.config.to_dict(), "image_size": self.image_size, "mean": self.mean,
            "std": self.std, "threshold": self.threshold, "version": self.version,
        }
        if self.quality is not None:
            data["quality"] = self.quality.to_dict()
        return data

    def with_quality(self, quality: QualityEstimator | None) -> ModelMeta:
        """A copy of this metadata with another quality estimator."""
        return dataclasses.replace(self, quality=quality)

    @classmethod
    def from_config(cls, config: Config) -> ModelMeta:
        mean, std = config.data.mean, config.data.std
        if mean is None or std is None:  # a Config fills them in (the backbone's)
            raise DermasegError("data.mean/data.std: not resolved; load the recipe with "
                                "dermaseg.config_io.load_config")
        return cls(config, config.data.image_size, list(mean), list(std),
                   config.train.threshold, __version__)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ModelMeta:
        """Raises: DermasegError naming `where`: a missing field or a value out of range."""
        try:
            config = config_from_dict(data["config"], f"{where}: config", INFERENCE_FIELDS)
            meta = cls(config, int(data["image_size"]), [float(v) for v in data["mean"]],
                       [float(v) for v in data["std"]], float(data["threshold"]),
                       str(data.get("version", "?")))
            quality = data.get("quality")
            if quality is not None:
                meta.quality = QualityEstimator.from_dict(quality, f"{where}: quality")
        except (KeyError, TypeError, ValueError) as exc:
            raise DermasegError(f"{where}: incomplete dermaseg metadata ({exc})") from exc
        meta._check_ranges(where)
        return meta

    def _check_ranges(self, where: str) -> None:
        problems = []
        if not 1 <= self.image_size <= 16384:
            problems.append(f"image_size {self.image_size} (expected 1..16384)")
        if len(self.mean) != 3 or not all(math.isfinite(v) for v in self.mean):
            problems.append(f"mean {self.mean} (expected 3 finite numbers)")
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            problems.append(f"std {self.std} (expected 3 numbers > 0)")
        if not 0 <= self.threshold <= 1:
            problems.append(f"threshold {self.threshold} (expected 0..1)")
        if problems:
            raise DermasegError(f"{where}: bad dermaseg metadata: {'; '.join(problems)}")


def folder_error(path: Path, what: str) -> DermasegError:
    """`path` is a folder where a file was expected: name the checkpoint a run folder holds."""
    inside = [path / name for name in ("best.ckpt", "last.ckpt") if (path / name).is_file()]
    hint = f"give the file, e.g. {inside[0]}" if inside else "give the .ckpt (or .onnx) file"
    return DermasegError(f"{path}: a folder, not a {what}; {hint}")


MODEL_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}  # anything else: a checkpoint


def model_kind(path: str | Path) -> str:
    """"onnx", "tflite" or "torch" (a checkpoint), from the model file's suffix."""
    return MODEL_SUFFIXES.get(Path(path).suffix.lower(), "torch")


def check_export_name(path: str | Path, kind: str) -> None:
    """Raises UsageError unless `path` is named so that every command reads it as a `kind`
    ("onnx" or "tflite") model: a model's kind is told by its suffix."""
    if model_kind(path) != kind:
        suffix = next(s for s, k in MODEL_SUFFIXES.items() if k == kind)
        raise UsageError(f"-o {path}: an {kind.upper()} export is named *{suffix} (predict, "
                         f"evaluate and serve tell a model by its suffix); e.g. -o "
                         f"{Path(path).with_suffix(suffix).name}")
