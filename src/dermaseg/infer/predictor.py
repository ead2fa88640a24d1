"""Checkpoint or ONNX model -> lesion probability and mask at each image's ORIGINAL size.

    predictor = Predictor.load("runs/r50/best.ckpt", device="cuda")   # or "model.onnx"
    probs = predictor.predict_proba([image_a, image_b])   # HxWx3 uint8 -> HxW float32 in [0, 1]
    mask = predictor.predict(image_a)                     # HxW bool, meta threshold

The input geometry is dermaseg.data.geometry's letterbox (resize keeping aspect, centred zero
padding); the probability map is cropped out of the padding and resized back bilinearly, then
thresholded, so a mask always has exactly the image's height and width.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dermaseg.checkpoint import ModelMeta, folder_error, load_model
from dermaseg.data.geometry import Letterbox, letterbox_image, restore_probability
from dermaseg.errors import DermasegError, UsageError
from dermaseg.infer.tta import TTAConfig, scaled_side, tta_probability


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the first CUDA GPU when there is one, else the CPU.

    Raises:
        UsageError: a CUDA device was asked for on a machine without one.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device}: not a device name (cpu, cuda, cuda:1 ...)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available on this machine")
    return resolved


class TorchBackend:
    """A PyTorch model: float32 (N, 3, H, W) numpy -> logits (N, 1, H, W) numpy."""

    fixed_side: int | None = None
    max_batch: int | None = None

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
        logits = self.model(inputs)
        if isinstance(logits, dict):  # with an edge head: {"mask": ..., "edge": ...}
            logits = logits["mask"]
        return logits.float().cpu().numpy()


class OnnxBackend:
    """An exported model: input "image" float32 (N, 3, S, S), output "logits" (N, 1, S, S).

    The export writes ModelMeta.to_dict() as JSON under the metadata key "dermaseg".
    """

    def __init__(self, path: str | Path, device: torch.device) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DermasegError(f"{path}: not a readable ONNX model ({exc})") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if "dermaseg" not in props:
            raise DermasegError(f"{path}: no 'dermaseg' metadata; export it with dermaseg export")
        try:
            self.meta = ModelMeta.from_dict(json.loads(props["dermaseg"]), str(path))
        except json.JSONDecodeError as exc:
            raise DermasegError(f"{path}: 'dermaseg' metadata is not JSON ({exc})") from exc
        names = {i.name: i for i in self.session.get_inputs()}
        if "image" not in names:
            raise DermasegError(f"{path}: model has no input named 'image' ({', '.join(names)})")
        shape = names["image"].shape
        self.max_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_side = shape[-1] if isinstance(shape[-1], int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(batch)
        parts = [
            self.session.run(["logits"], {"image": np.ascontiguousarray(batch[i : i + step])})[0]
            for i in range(0, len(batch), step)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)


class Predictor:
    """Letterbox, normalise, run (with optional TTA), undo the letterbox, threshold."""

    def __init__(self, backend, meta: ModelMeta, *, tta: TTAConfig | None = None,
                 batch_size: int = 8) -> None:
        self.backend = backend
        self.meta = meta
        self.tta = tta
        self.batch_size = max(1, batch_size)
        mean = np.asarray(meta.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(meta.std, dtype=np.float32).reshape(3, 1, 1)
        self._mean, self._std = mean * 255.0, std * 255.0
        if tta is not None and backend.fixed_side is not None:
            bad = [s for s in tta.scales if scaled_side(meta.image_size, s) != backend.fixed_side]
            if bad:
                raise UsageError(f"tta scales {bad}: this ONNX model has a fixed input size "
                                 f"{backend.fixed_side}; use flips only")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> Predictor:
        """A `.ckpt`/`.pt` checkpoint or an `.onnx` export.

        Raises:
            DermasegError: the file is missing or not a dermaseg model.
        """
        path = Path(path)
        if not path.exists():
            raise UsageError(f"{path}: no such model file")
        if not path.is_file():
            raise folder_error(path, "model file")
        device = resolve_device(device)
        if path.suffix.lower() == ".onnx":
            from dermaseg.export import check_onnx

            check_onnx(path)  # graph, names, ranks and metadata, before onnxruntime sees it
            backend = OnnxBackend(path, device)
            return cls(backend, backend.meta, **kwargs)
        model, meta = load_model(path, device)
        return cls(TorchBackend(model, device), meta, **kwargs)

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    def prepare(self, image: np.ndarray, original: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, Letterbox]:
        """HxWx3 uint8 -> normalised float32 (3, S, S) and its Letterbox.

        `original` is the (height, width) of the original when `image` is a reduced decode of
        it (fileio.read_rgb_reduced): the geometry is then that of the original, exactly as in
        `data prepare`, and the probability is restored to the original size.

        Raises:
            DermasegError: the array is not HxWx3 uint8.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DermasegError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        box = Letterbox.fit(*original, self.meta.image_size) if original else None
        canvas, box = letterbox_image(Image.fromarray(image), self.meta.image_size, box=box)
        chw = canvas.transpose(2, 0, 1).astype(np.float32)
        return (chw - self._mean) / self._std, box

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised (N, 3, S, S) -> probabilities (N, S, S)."""
        if self.tta is not None:
            return tta_probability(self.backend, batch, self.tta)
        logits = torch.from_numpy(self.backend(batch))
        return torch.sigmoid(logits[:, 0]).numpy()

    def predict_letterboxed(self, images: list[np.ndarray],
                            originals: list | None = None) -> list[tuple[np.ndarray, Letterbox]]:
        """(S x S probability, Letterbox) per image, not yet restored to the original size:
        `restore_probability(prob, box)` does that, one image at a time to bound memory (a
        6000x4000 map is 96 MB). `originals`: see `prepare`."""
        originals = originals or [None] * len(images)
        results: list[tuple[np.ndarray, Letterbox]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            prepared = [self.prepare(image, original)
                        for image, original in zip(images[chunk], originals[chunk], strict=True)]
            probs = self._run(np.stack([array for array, _ in prepared]))
            results += [(p, box) for p, (_, box) in zip(probs, prepared, strict=True)]
        return results

    def predict_proba(self, images: list[np.ndarray], originals: list | None = None
                      ) -> list[np.ndarray]:
        """HxWx3 uint8 images -> HxW float32 probabilities at each image's original size."""
        return [restore_probability(p, box)
                for p, box in self.predict_letterboxed(images, originals)]

    def to_mask(self, prob: np.ndarray, image: np.ndarray | None = None, postprocess=None):
        """Threshold a probability map (HxW) to a bool mask, then post-process if asked."""
        mask = prob > self.threshold
        if postprocess is not None:
            from dermaseg.infer.postprocess import postprocess as run_postprocess

            mask = run_postprocess(mask, prob, image, postprocess)
        return mask

    def predict(self, image: np.ndarray, postprocess=None) -> np.ndarray:
        """HxWx3 uint8 -> HxW bool lesion mask at the original size."""
        return self.to_mask(self.predict_proba([image])[0], image, postprocess)
