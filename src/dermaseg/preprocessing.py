"""The network's input, defined once: letterbox to the model's side, then normalise.

    prep = Preprocessing.from_meta(meta)        # or .from_config(config) while training
    network_input, box = prep(image)            # HxWx3 uint8 -> float32 (3, S, S), Letterbox
    batch = prep.normalise_tensor(uint8_batch)  # the same normalisation on a torch batch
    Normalisation.of(mean, std).tensor(batch)   # the normalisation alone

Training (the normalisation on the training device), the `Predictor`, the export parity check,
INT8 calibration and the service all call this object, so they feed the network the same
numbers for the same image: `(x - 255 * mean) / (255 * std)` in float32, with `mean` and `std`
as float32 (the numpy and the torch forms round identically). The geometry is
`dermaseg.geometry`'s letterbox, the one `data prepare` uses.

torch-free: the torch form imports PyTorch only when it is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dermaseg.errors import DermasegError
from dermaseg.geometry import Letterbox, letterbox_image

if TYPE_CHECKING:
    import torch

    from dermaseg.config import Config
    from dermaseg.model_meta import ModelMeta


@dataclass(frozen=True)
class Normalisation:
    """RGB in 0..255 -> `(x - 255 * mean) / (255 * std)` in float32; mean/std of 0..1 RGB."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> Normalisation:
        """Raises: DermasegError: not three values each."""
        return cls(_three(mean), _three(std))

    def scaled(self) -> tuple[np.ndarray, np.ndarray]:
        """255 * mean and 255 * std as float32 (3,): the constants of both forms."""
        return (np.asarray(self.mean, np.float32) * np.float32(255.0),
                np.asarray(self.std, np.float32) * np.float32(255.0))

    def array(self, chw: np.ndarray) -> np.ndarray:
        """(..., 3, H, W) uint8 or float in 0..255 -> float32 normalised, numpy."""
        mean, std = (value.reshape(3, 1, 1) for value in self.scaled())
        return (chw.astype(np.float32) - mean) / std

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 or float in 0..255 -> float32 normalised, on the images'
        device and in their memory format; the constants are copied to a GPU once."""
        from dermaseg.upload import constant

        mean, std = self.scaled()
        mean_t = constant(mean.tolist(), images.device, (3, 1, 1))
        std_t = constant(std.tolist(), images.device, (3, 1, 1))
        return (images.float() - mean_t) / std_t


@dataclass(frozen=True)
class Preprocessing:
    """Letterbox to `image_size`, then normalise."""

    image_size: int
    normalisation: Normalisation

    @classmethod
    def from_meta(cls, meta: ModelMeta) -> Preprocessing:
        return cls(int(meta.image_size), Normalisation.of(meta.mean, meta.std))

    @classmethod
    def from_config(cls, config: Config) -> Preprocessing:
        """The preprocessing a model trained with `config` records in its metadata.

        Raises:
            DermasegError: the config's mean/std are not resolved.
        """
        data = config.data
        if data.mean is None or data.std is None:
            raise DermasegError("data.mean/data.std: not resolved (load the recipe with "
                                "dermaseg.config so they are filled in from the backbone)")
        return cls(int(data.image_size), Normalisation.of(data.mean, data.std))

    def letterbox(self, image: np.ndarray, original: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, Letterbox]:
        """HxWx3 uint8 -> (S x S x 3 uint8 canvas, Letterbox).

        `original` is the (height, width) of the original when `image` is a reduced decode of
        it (fileio.read_rgb_reduced): the geometry is then that of the original, exactly as in
        `data prepare`.

        Raises:
            DermasegError: the array is not HxWx3 uint8.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DermasegError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        box = Letterbox.fit(*original, self.image_size) if original else None
        return letterbox_image(Image.fromarray(image), self.image_size, box=box)

    def normalise_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The training side: a uint8 batch (N, 3, S, S) normalised on its device."""
        return self.normalisation.tensor(images)

    def __call__(self, image: np.ndarray, original: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, Letterbox]:
        """HxWx3 uint8 -> (normalised float32 (3, S, S), Letterbox); see `letterbox`."""
        canvas, box = self.letterbox(image, original)
        return self.normalisation.array(canvas.transpose(2, 0, 1)), box


def _three(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise DermasegError(f"mean/std: expected 3 values (RGB), got {list(values)}")
    red, green, blue = (float(v) for v in values)
    return red, green, blue
