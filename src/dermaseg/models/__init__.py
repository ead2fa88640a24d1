"""DeepLab-v3 / v3+ models: `build_model(ModelConfig)`; backbones by name in `BACKBONES`."""

from dermaseg.models.backbones import BACKBONES
from dermaseg.models.factory import DeepLab, build_model

__all__ = ["BACKBONES", "DeepLab", "build_model"]
