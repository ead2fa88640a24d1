"""The network's input, defined once: letterbox to the model's side, then (optionally) correct
the colours, then normalise.

    prep = Preprocessing.from_meta(meta)        # or .from_config(config) while training
    network_input, box = prep(image)            # HxWx3 uint8 -> float32 (3, S, S), Letterbox
    batch = prep.normalise_tensor(uint8_batch)  # the same colours + normalisation on a torch batch
    Normalisation.of(mean, std).tensor(batch)   # the normalisation alone

Training (the normalisation on the training device), the `Predictor`, the export parity check,
INT8 calibration and the service all call this object, so they feed the network the same
numbers for the same image: `(x - 255 * mean) / (255 * std)` in float32, with `mean` and `std`
as float32 (the numpy and the torch forms round identically). With `data.colour_constancy:
shades_of_gray` in the model's config, `x` is first the letterboxed canvas corrected by
`ShadesOfGray` (in training: the augmented batch). The geometry is `dermaseg.geometry`'s
letterbox, the one `data prepare` uses.

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

    from dermaseg.config import Config, DataConfig
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
class ShadesOfGray:
    """Colour constancy by Shades of Gray (Finlayson & Trezzi 2004), as the ISIC 2019 winners
    used it (Gessert et al. 2020), per image of RGB `x` in 0..255:

        e_c = (mean over the pixels of (x_c / 255) ** p) ** (1 / p)   illuminant, c = R, G, B
        g_c = sqrt((e_R ** 2 + e_G ** 2 + e_B ** 2) / 3) / e_c          e becomes a grey
        out_c = min(x_c * g_c, 255)                                     float32, not rounded

    (the reference code's scaling: the grey has the estimate's root-mean-square). An image with
    a channel whose estimate is 0 (all black) is left as it is. The letterbox's zero padding
    does not change the gains: zeros on a fraction `f` of the canvas multiply every channel's
    mean of x^p by the same (1 - f), so every e_c by (1 - f) ** (1/p), which cancels in g_c; the
    padding stays 0. e is computed in float64 (float32 where the device has none: MPS) and `g`
    rounded to float32, so the numpy and the torch forms give the same float32 numbers (up to
    the last bit of a sum taken in another order, ~1e-16 before that rounding).
    """

    p: float = 6.0

    def __post_init__(self) -> None:
        if not 1 <= self.p <= 16:  # also refuses NaN
            raise DermasegError(f"data.colour_constancy_p: expected 1..16, got {self.p}")

    def array(self, chw: np.ndarray) -> np.ndarray:
        """(..., 3, H, W) uint8 -> float32 corrected in 0..255, numpy."""
        _check_uint8(str(chw.dtype), chw.shape)
        powered = chw.astype(np.float64)
        powered /= 255.0
        np.power(powered, self.p, out=powered)
        estimate = powered.mean(axis=(-2, -1)) ** (1.0 / self.p)  # (..., 3)
        red, green, blue = estimate[..., 0], estimate[..., 1], estimate[..., 2]
        grey = np.sqrt((red * red + green * green + blue * blue) / 3.0)[..., None]
        seen = np.all(estimate > 0, axis=-1, keepdims=True)
        gains = np.where(seen, grey / np.where(estimate > 0, estimate, 1.0), 1.0)
        gains = gains.astype(np.float32)[..., None, None]
        return np.minimum(chw.astype(np.float32) * gains, np.float32(255.0))

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 -> float32 corrected in 0..255, on the images' device and in
        their memory format; no host-device synchronisation."""
        import torch

        _check_uint8(str(images.dtype).removeprefix("torch."), tuple(images.shape))
        wide = torch.float32 if images.device.type == "mps" else torch.float64
        powered = images.to(wide).div_(255.0).pow_(self.p)
        estimate = powered.mean(dim=(-2, -1)).pow(1.0 / self.p)  # (..., 3)
        red, green, blue = estimate[..., 0], estimate[..., 1], estimate[..., 2]
        grey = torch.sqrt((red * red + green * green + blue * blue) / 3.0)[..., None]
        seen = torch.all(estimate > 0, dim=-1, keepdim=True)
        gains = torch.where(seen, grey / torch.where(estimate > 0, estimate, 1.0), 1.0)
        gains = gains.float()[..., None, None]
        return (images.float() * gains).clamp_(max=255.0)


def _check_uint8(dtype: str, shape: tuple[int, ...]) -> None:
    if dtype != "uint8" or len(shape) < 3 or shape[-3] != 3:
        raise DermasegError(f"colour constancy: expected uint8 RGB (..., 3, H, W), got {dtype} "
                            f"{tuple(shape)}")


def colour_constancy(data: DataConfig) -> ShadesOfGray | None:
    """The colour correction `data.colour_constancy` names (None: "none").

    Raises:
        DermasegError: an unknown method, or colour_constancy_p out of range.
    """
    method = data.colour_constancy
    if method == "none":
        return None
    if method == "shades_of_gray":
        return ShadesOfGray(float(data.colour_constancy_p))
    raise DermasegError(f"data.colour_constancy: expected none or shades_of_gray, got {method!r}")


@dataclass(frozen=True)
class Preprocessing:
    """Letterbox to `image_size`, correct the colours (`colours`, None: not), normalise."""

    image_size: int
    normalisation: Normalisation
    colours: ShadesOfGray | None = None

    @classmethod
    def from_meta(cls, meta: ModelMeta) -> Preprocessing:
        """Raises: DermasegError: the metadata's colour constancy is not one this release has."""
        return cls(int(meta.image_size), Normalisation.of(meta.mean, meta.std),
                   colour_constancy(meta.config.data))

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
        return cls(int(data.image_size), Normalisation.of(data.mean, data.std),
                   colour_constancy(data))

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
        """The training side: a uint8 batch (N, 3, S, S) colour-corrected (with `colours`)
        and normalised on its device."""
        if self.colours is not None:
            return self.normalisation.tensor(self.colours.tensor(images))
        return self.normalisation.tensor(images)

    def __call__(self, image: np.ndarray, original: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, Letterbox]:
        """HxWx3 uint8 -> (normalised float32 (3, S, S), Letterbox); see `letterbox`."""
        canvas, box = self.letterbox(image, original)
        chw = canvas.transpose(2, 0, 1)
        if self.colours is not None:
            return self.normalisation.array(self.colours.array(chw)), box
        return self.normalisation.array(chw), box


def _three(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise DermasegError(f"mean/std: expected 3 values (RGB), got {list(values)}")
    red, green, blue = (float(v) for v in values)
    return red, green, blue
