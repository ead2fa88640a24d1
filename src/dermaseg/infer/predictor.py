"""Checkpoint or ONNX model -> lesion probability and mask at each image's ORIGINAL size.

    predictor = Predictor.load("runs/r50/best.ckpt", device="cuda")   # or "model.onnx"
    probs = predictor.predict_proba([image_a, image_b])   # HxWx3 uint8 -> HxW float32 in [0, 1]
    mask = predictor.predict(image_a)                     # HxW bool, meta threshold

The input geometry is dermaseg.geometry's letterbox (resize keeping aspect, centred zero
padding); the probability map is cropped out of the padding and resized back bilinearly, then
thresholded, so a mask always has exactly the image's height and width.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from dermaseg.data.discover import IMAGE_SUFFIXES
from dermaseg.errors import DermasegError, UsageError
from dermaseg.geometry import Letterbox, restore_probability
from dermaseg.infer.backend import Backend
from dermaseg.infer.memory import check_batch_memory
from dermaseg.infer.onnx_backend import OnnxBackend, check_onnx
from dermaseg.infer.tta import TTAConfig, scaled_side, sigmoid, tta_probability
from dermaseg.model_folder import check_model_path, resolve_model
from dermaseg.model_meta import ModelMeta, folder_error, model_kind
from dermaseg.preprocessing import Preprocessing


class Letterboxed(NamedTuple):
    """One image's network output, not yet restored to the image's size."""

    probability: np.ndarray  # (S, S) float32
    box: Letterbox  # where the image lies in it
    spread: np.ndarray | None  # (S, S) standard deviation between views; None: one view


class Predictor:
    """Letterbox, normalise, run (with optional TTA), undo the letterbox, threshold."""

    def __init__(self, backend: Backend, meta: ModelMeta, *, tta: TTAConfig | None = None,
                 batch_size: int = 8) -> None:
        self.backend = backend
        self.meta = meta
        self.tta = tta
        self.batch_size = max(1, batch_size)
        self.preprocessing = Preprocessing.from_meta(meta)
        fixed = getattr(backend, "fixed_side", None)
        if fixed is not None and fixed != meta.image_size:
            raise DermasegError(f"the model's input is {fixed} px but its metadata says "
                                f"{meta.image_size} px (a metadata file of another model?)")
        if tta is not None and fixed is not None:
            bad = [s for s in tta.scales if scaled_side(meta.image_size, s) != fixed]
            if bad:
                raise UsageError(f"tta scales {bad}: this model has a fixed input size "
                                 f"{fixed}; use flips only")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", **kwargs) -> Predictor:
        """A `.ckpt`/`.pt` checkpoint, a model folder (local or hf://owner/name, see
        `dermaseg.model_folder`), an `.onnx` export or a `.tflite` export with its
        `.tflite.json` (the exports run without importing PyTorch).

        Raises:
            DermasegError: the file is missing or not a dermaseg model, or a batch of its
                input size would not fit in memory (refuse_unfit).
        """
        path = resolve_model(path)
        if not path.exists():
            raise UsageError(f"{path}: no such model file")
        if path.is_dir():
            check_model_path(path)
        elif not path.is_file():
            raise folder_error(path, "model file")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise UsageError(f"{path}: an image, not a model (.ckpt, .onnx or .tflite); the "
                             "model comes first: MODEL IMAGES...")
        if model_kind(path) == "onnx":
            meta = check_onnx(path)  # graph, names, ranks and metadata, before onnxruntime
            backend = OnnxBackend(path, device)
            on_gpu = "CUDAExecutionProvider" in backend.session.get_providers()
            return cls(backend, meta, **kwargs).refuse_unfit(path, on_gpu)
        if model_kind(path) == "tflite":
            from dermaseg.infer.tflite_backend import TfliteBackend, read_tflite_meta

            meta = read_tflite_meta(path)
            return cls(TfliteBackend(path, device), meta, **kwargs).refuse_unfit(path)
        from dermaseg.checkpoint import load_model
        from dermaseg.infer.torch_backend import TorchBackend, resolve_device

        torch_device = resolve_device(device)
        model, meta = load_model(path, torch_device)
        return cls(TorchBackend(model, torch_device), meta, **kwargs).refuse_unfit(
            path, torch_device.type == "cuda")

    def refuse_unfit(self, path: Path, on_gpu: bool = False) -> Predictor:
        """This predictor, once its batch is estimated to fit in memory (on a GPU: the
        host's share).

        Raises:
            DermasegError: naming `path`: the model's input size (from its metadata) needs
                more memory than is available; says which --batch-size would fit, if any.
        """
        check_batch_memory(self.meta, self.batch_size, str(path), self.tta, on_gpu)
        return self

    def with_tta(self, tta: TTAConfig | None) -> Predictor:
        """The same model and backend, with another test-time augmentation."""
        return Predictor(self.backend, self.meta, tta=tta, batch_size=self.batch_size)

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised (N, 3, S, S) -> probabilities (N, S, S), and their standard deviation
        between the test-time views (None without TTA)."""
        if self.tta is not None:
            return tta_probability(self.backend, batch, self.tta)
        return sigmoid(self.backend(batch)[:, 0]), None

    def predict_letterboxed(self, images: list[np.ndarray],
                            originals: list | None = None) -> list[Letterboxed]:
        """A Letterboxed per image, not yet restored to the original size:
        `restore_probability(result.probability, result.box)` does that, one image at a time
        to bound memory (a 6000x4000 map is 96 MB).
        `originals`: each image's original (height, width) when it is a reduced decode (see
        Preprocessing.letterbox)."""
        originals = originals or [None] * len(images)
        results: list[Letterboxed] = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            prepared = [self.preprocessing(image, original)
                        for image, original in zip(images[chunk], originals[chunk], strict=True)]
            probs, spreads = self._run(np.stack([array for array, _ in prepared]))
            for index, (_, box) in enumerate(prepared):
                spread = None if spreads is None else spreads[index]
                results.append(Letterboxed(probs[index], box, spread))
        return results

    def predict_proba(self, images: list[np.ndarray], originals: list | None = None
                      ) -> list[np.ndarray]:
        """HxWx3 uint8 images -> HxW float32 probabilities at each image's original size."""
        return [restore_probability(result.probability, result.box)
                for result in self.predict_letterboxed(images, originals)]

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
