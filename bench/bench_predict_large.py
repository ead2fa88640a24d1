"""`dermaseg predict` on very large images: time and peak memory per stage outside the network.

For a synthetic 6000x4000 JPEG (ISIC's largest size) and a 1024x768 one, each stage of the
prediction path is timed the straightforward way ("before": full decode, full-size labelling,
scipy's fill-holes, measurements and overlay on the whole image, PNG level 6) and the way
dermaseg does it now ("after"), in the same process, median of --repeats runs. Peak MB is the
process RSS reached during the stage above the RSS at its start (sampled every 2 ms). The
"same" column says whether the two give the same result.

    python bench/bench_predict_large.py [--repeats 3] [--checkpoint runs/x/best.ckpt]

The network stage uses the cpu_small architecture (weights do not change its speed); the
probability map of the other stages is the synthetic truth mask, letterboxed and blurred, so
that post-processing and measurements see a realistic lesion even without a trained model.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from dermaseg.fileio import read_rgb, read_rgb_reduced  # noqa: E402
from dermaseg.geometry import letterbox_image, restore_probability  # noqa: E402
from dermaseg.infer import batch as infer_batch  # noqa: E402
from dermaseg.infer import postprocess as pp  # noqa: E402
from dermaseg.infer.measure import contour_polygon, measure_in_box, measure_lesion  # noqa: E402
from dermaseg.infer.overlay import draw_overlay  # noqa: E402
from dermaseg.serve import work  # noqa: E402

PAGE_MB = 4096 / 2**20


class PeakRSS:
    """Peak resident memory above the start, sampled from /proc/self/statm in a thread."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    def _rss(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_MB

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @property
    def mb(self) -> float:
        return self.peak - self.start


def measure(fn, repeats: int) -> tuple[float, float, object]:
    """(median seconds, largest peak MB, last result) of `fn()`."""
    times, peaks, result = [], [], None
    for _ in range(repeats):
        result = None
        with PeakRSS() as rss:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        peaks.append(rss.mb)
    return statistics.median(times), max(peaks), result


def same(a, b) -> bool:
    """Equal results: arrays exactly, floats to 1e-9 relative, containers item by item."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, list | tuple):
        return (isinstance(b, list | tuple) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(a, float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return a == b


def _png(array: np.ndarray, level: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def _png_pixels(array: np.ndarray, level: int = 6) -> np.ndarray:
    """Encode `array`; return it, so that the pixels written are compared, not the bytes."""
    _png(array, level)
    return array


def _jpeg(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return len(buffer.getvalue())


def old_keep_largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels == int(np.argmax(sizes)) + 1 if sizes.size else mask.copy()


def network_input(path: Path, size: int, reduced: bool) -> np.ndarray:
    if not reduced:
        return letterbox_image(Image.fromarray(read_rgb(path)), size)[0]
    image, (height, width) = read_rgb_reduced(path, size)
    from dermaseg.geometry import Letterbox

    return letterbox_image(Image.fromarray(image), size, box=Letterbox.fit(height, width, size))[0]


def synthetic_probability(truth: np.ndarray, size: int):
    """The truth mask letterboxed to the network size and blurred: (S x S float32, box)."""
    canvas, box = letterbox_image(Image.fromarray(truth.astype(np.uint8) * 255), size,
                                  is_mask=True)
    return ndimage.gaussian_filter(canvas.astype(np.float32) / 255.0, 1.5), box


def stage_pairs(path: Path, truth: np.ndarray, size: int) -> list:
    """(stage, before, after) callables for one image, in pipeline order."""
    image = read_rgb(path)
    small, box = synthetic_probability(truth, size)
    prob = restore_probability(small, box)
    mask = prob > 0.5
    colour = infer_batch.OVERLAY_COLOUR
    return [
        ("decode (JPEG, EXIF)", lambda: read_rgb(path).shape[:2],
         lambda: read_rgb_reduced(path, size)[1]),
        ("decode + letterbox = network input", lambda: network_input(path, size, False),
         lambda: network_input(path, size, True)),
        ("restore prob to full size (float32)", lambda: restore_probability(small, box), None),
        ("threshold", lambda: prob > 0.5, None),
        ("keep-largest", lambda: old_keep_largest(mask),
         lambda: pp.keep_largest_component(mask)),
        ("fill-holes", lambda: ndimage.binary_fill_holes(mask), lambda: pp.fill_holes(mask)),
        ("overlay: draw contour", lambda: draw_overlay(image, [(mask, colour)]), None),
        ("overlay: JPEG q90", lambda: _jpeg(image), None),
        ("measure (colours too)", lambda: measure_lesion(mask, image),
         lambda: measure_in_box(mask, image)),
        ("mask PNG (level 6)", lambda: _png(mask.astype(np.uint8) * 255), None),
        ("--save-prob: to uint8 + PNG (6 -> 1)",
         lambda: _png_pixels(np.round(prob * 255).clip(0, 255).astype(np.uint8)),
         lambda: _png_pixels(infer_batch.probability_png(prob), 1)),
        ("server: mask PNG", lambda: _png(np.where(mask, 255, 0).astype(np.uint8)),
         lambda: work.mask_png(mask)),
        ("contour polygon (in the lesion box)", lambda: contour_polygon(mask), None),
    ]


def stage_rows(label: str, pairs: list, repeats: int) -> list[dict]:
    rows = []
    for stage, before, after in pairs:
        old_s, old_mb, old_result = measure(before, repeats)
        row = {"image": label, "stage": stage, "before s": old_s, "before MB": old_mb}
        if after is None:
            row.update({"after s": old_s, "after MB": old_mb, "speed-up": 1.0,
                        "same": "unchanged"})
        else:
            new_s, new_mb, new_result = measure(after, repeats)
            equal = same(old_result, new_result)
            row.update({"after s": new_s, "after MB": new_mb, "speed-up": old_s / new_s,
                        "same": "yes" if equal else "differs (see notes)"})
        rows.append(row)
        print(f"{label} {stage}: {row['before s']:.3f} -> {row['after s']:.3f} s", flush=True)
    return rows


def total_row(label: str, rows: list[dict], skip: tuple[str, ...]) -> dict:
    """Sum of one image's stages (a plain run's decode, restore, threshold, mask PNG plus
    --keep-largest --fill-holes --overlay --measure), without the rows in `skip`."""
    kept = [r for r in rows if r["image"] == label and r["stage"] not in skip]
    before, after = sum(r["before s"] for r in kept), sum(r["after s"] for r in kept)
    return {"image": label, "stage": "TOTAL outside the network (predict, all options)",
            "before s": before, "before MB": max(r["before MB"] for r in kept),
            "after s": after, "after MB": max(r["after MB"] for r in kept),
            "speed-up": before / after, "same": ""}


def network_row(label: str, checkpoint: str | None, size: int, repeats: int) -> dict:
    import torch

    from dermaseg.checkpoint import load_model
    from dermaseg.config_io import load_config
    from dermaseg.model_meta import ModelMeta
    from dermaseg.models.factory import build_model

    if checkpoint:
        model, _ = load_model(checkpoint)
    else:
        torch.manual_seed(0)
        config = load_config("cpu_small")
        model = build_model(config.model).eval()
        ModelMeta.from_config(config)
    batch = torch.zeros((1, 3, size, size))
    with torch.inference_mode():
        seconds, mb, _ = measure(lambda: model(batch), repeats)
    return {"image": label, "stage": f"(network itself, {size} px, for scale)",
            "before s": seconds, "before MB": mb, "after s": seconds, "after MB": mb,
            "speed-up": 1.0, "same": "unchanged"}


def make_images(folder: Path, sizes: list[str]) -> list[tuple[str, Path, np.ndarray]]:
    """One synthetic JPEG (and its truth) per WxH in `sizes`."""
    from dermaseg.data.synth import SynthOptions, synth_pair

    rng = np.random.default_rng(0)
    made = []
    for text in sizes:
        width, height = (int(v) for v in text.split("x"))
        image, truth = synth_pair(rng, width, height, SynthOptions())
        path = folder / f"synth_{text}.jpg"
        Image.fromarray(image).save(path, quality=95)
        made.append((text, path, truth > 0))
    return made


NOT_IN_PREDICT = ("decode (JPEG, EXIF)", "--save-prob: to uint8 + PNG (6 -> 1)",
                  "server: mask PNG", "server: contour polygon")
NOTES = [
    "before: the straightforward computation, as dermaseg did it before; after: the current "
    "code; both in this process, median seconds of the repeats, peak MB = RSS reached above "
    "the RSS at the stage's start.",
    "network input: predict now decodes a large JPEG with Pillow's draft (DCT scaling), like "
    "`data prepare`, so its input is identical to the training data's; it differs from a "
    "resize of the full decode by a few grey levels (hence 'differs'), the masks of a trained "
    "model by a few boundary pixels at full size. With --overlay/--measure/--crf the full "
    "image is decoded as well, one image at a time, after the network.",
    "measure: values agree to 1e-9 relative (computed inside the lesion's bounding box).",
    "TOTAL: decode + letterbox, restore, threshold, keep-largest, fill-holes, overlay "
    "(draw + JPEG), measure, mask PNG; the after column adds the full decode that --overlay "
    "and --measure need besides the reduced one (a plain run does without it).",
    "--save-prob: the same pixels, written with zlib level 1 instead of 6 (about 30 % more "
    "bytes).",
]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="6000x4000,1024x768")
    parser.add_argument("--size", type=int, default=192, help="network input side")
    parser.add_argument("--checkpoint", help="time this model's network instead")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-large-") as folder:
        for label, path, truth in make_images(Path(folder), args.sizes.split(",")):
            rows += stage_rows(label, stage_pairs(path, truth, args.size), args.repeats)
            full_decode = next(r for r in rows if r["image"] == label
                               and r["stage"].startswith("decode ("))
            rows.append(total_row(label, rows, NOT_IN_PREDICT))
            rows[-1]["after s"] += full_decode["before s"]  # --overlay/--measure: full decode
            rows[-1]["speed-up"] = rows[-1]["before s"] / rows[-1]["after s"]
        rows.append(network_row("any", args.checkpoint, args.size, args.repeats))
    report("predict_large", "predict on large images: stages outside the network, before/after",
           rows, NOTES)


if __name__ == "__main__":
    main(sys.argv[1:])
