"""Drawings and reports of an evaluation: overlays, the Jaccard histogram, the gallery, MD/HTML.

Matplotlib runs with the Agg backend (no display needed); overlays are drawn with numpy/PIL.
Contours in the Okabe-Ito colours, told apart with every common colour-vision deficiency:
truth blue, prediction orange. report.html is one self-contained file (its pictures embedded),
to be sent as it is; report.md links the PNGs beside it.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
from PIL import Image

from dermaseg.fileio import safe_child, write_bytes_atomic
from dermaseg.infer.overlay import draw_overlay

if TYPE_CHECKING:
    from dermaseg.evaluation.quality_report import ReportSection

TRUTH_COLOUR = (0, 114, 178)  # Okabe-Ito blue
PRED_COLOUR = (230, 159, 0)  # Okabe-Ito orange
LEGEND = "blue: ground truth, orange: prediction"
THUMB_SIDE = 256


def thumbnail(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray,
              side: int = THUMB_SIDE) -> np.ndarray:
    """A small overlay (longest side `side`): truth in blue, prediction in orange."""
    height, width = pred.shape
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def small(mask: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(mask.astype(np.uint8) * 255)
        return np.asarray(resized.resize(size, Image.Resampling.NEAREST)) > 127

    base = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    masks: list[tuple[np.ndarray, tuple[int, int, int]]] = [(small(pred), PRED_COLOUR)]
    if truth is not None:
        masks.insert(0, (small(truth), TRUTH_COLOUR))
    return draw_overlay(base, masks, width=2)


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_jaccard_histogram(values: Sequence[float], path: Path, threshold: float = 0.65) -> None:
    """Histogram of per-image Jaccard in [0, 1], the ISIC 0.65 cut-off marked; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.hist(np.asarray(values, dtype=float), bins=np.linspace(0, 1, 21).tolist(),
              color="#4c72b0", edgecolor="white")
    axes.axvline(threshold, color="#c44e52", linestyle="--",
                 label=f"threshold-Jaccard cut-off {threshold}")
    below = int(np.sum(np.asarray(values) < threshold))
    axes.set_title(f"Per-image Jaccard (IoU), {len(values)} images, {below} below {threshold}")
    axes.set_xlabel("Jaccard")
    axes.set_ylabel("images")
    axes.set_xlim(0, 1)
    axes.legend(loc="upper left")
    write_bytes_atomic(path, png_bytes(figure))


@dataclass(order=True)
class _Case:
    key: float
    image_id: str = field(compare=False)
    jaccard: float = field(compare=False)
    picture: np.ndarray = field(compare=False, repr=False)


class GalleryCollector:
    """Keeps the `k` best and `k` worst images by Jaccard, drawing a thumbnail only for those.

    `offer(image_id, jaccard, draw)`: `draw()` returns the thumbnail and is called only when
    the image enters the best or worst set, so memory holds at most 2k thumbnails.
    """

    def __init__(self, k: int = 6) -> None:
        self.k = k
        self._best: list[_Case] = []  # min-heap on jaccard
        self._worst: list[_Case] = []  # min-heap on -jaccard

    def _push(self, heap: list[_Case], key: float, image_id: str, jaccard: float, draw) -> None:
        if len(heap) < self.k or key > heap[0].key:
            case = _Case(key, image_id, jaccard, draw())
            (heapq.heappush if len(heap) < self.k else heapq.heapreplace)(heap, case)

    def offer(self, image_id: str, jaccard: float, draw: Callable[[], np.ndarray]) -> None:
        self._push(self._best, jaccard, image_id, jaccard, draw)
        self._push(self._worst, -jaccard, image_id, jaccard, draw)

    def _cases(self) -> list[_Case]:
        unique = {c.image_id: c for c in self._best + self._worst}
        return sorted(unique.values(), key=lambda c: -c.jaccard)

    def best(self) -> list[_Case]:
        """Up to k highest-Jaccard cases (half of them when there are fewer than 2k)."""
        cases = self._cases()
        return cases[: min(self.k, (len(cases) + 1) // 2)]

    def worst(self) -> list[_Case]:
        """Up to k lowest-Jaccard cases, worst first, none of them among `best()`."""
        cases = self._cases()
        rest = cases[min(self.k, (len(cases) + 1) // 2):]
        return sorted(rest, key=lambda c: c.jaccard)[: self.k]


def save_gallery(collector: GalleryCollector, folder: Path) -> dict[str, list[dict]]:
    """Write each kept thumbnail as folder/<best|worst>_<rank>_<id>.png; returns their entries.

    Raises:
        UnsafeName: an id that cannot be part of a file name (fileio.safe_child).
    """
    entries: dict[str, list[dict]] = {"best": [], "worst": []}
    for group, cases in (("best", collector.best()), ("worst", collector.worst())):
        for rank, case in enumerate(cases, 1):
            name = f"{group}_{rank:02d}_{case.image_id}.png"
            path = safe_child(folder, name, f"gallery picture of image id {case.image_id!r}:")
            buffer = io.BytesIO()
            Image.fromarray(case.picture).save(buffer, format="PNG")
            write_bytes_atomic(path, buffer.getvalue())
            entries[group].append({"id": case.image_id, "jaccard": case.jaccard,
                                   "file": f"{folder.name}/{name}"})
    return entries


LABELS = {
    "dice": "Dice", "jaccard": "IoU (Jaccard)",
    "threshold_jaccard": "Threshold-Jaccard (ISIC 2018)",
    "sensitivity": "Sensitivity", "specificity": "Specificity", "accuracy": "Accuracy",
    "precision": "Precision",
}


# What each metric is, for the reader of a report (A: predicted lesion, B: true lesion, per
# image; TP, FP, FN, TN: pixel counts).
DEFINITIONS = {
    "dice": "2|A ∩ B| / (|A| + |B|): overlap, 1 = identical",
    "jaccard": "|A ∩ B| / |A ∪ B| (intersection over union)",
    "threshold_jaccard": "the Jaccard index, counted as 0 below 0.65 (a failed image), then "
                         "averaged: the ISIC 2018 challenge's ranking score",
    "sensitivity": "TP / (TP + FN): share of the lesion found",
    "specificity": "TN / (TN + FP): share of the skin left out",
    "accuracy": "(TP + TN) / all pixels",
    "precision": "TP / (TP + FP): share of the predicted lesion that is lesion",
}


def ci_text(ci95: dict[str, list[float]] | None, name: str) -> str:
    """'0.8901-0.9113', the 95 % interval of metric `name`'s mean; '-' without one."""
    return "-" if ci95 is None else f"{ci95[name][0]:.4f}-{ci95[name][1]:.4f}"


def metric_rows(per_image: dict[str, dict[str, float]], overall: dict[str, float],
                ci95: dict[str, list[float]] | None = None):
    """[(label, mean, 95 % CI text, median, min)] for each metric, mean = the official macro
    average, CI = its bootstrap interval over images ('-' when `ci95` is None)."""
    rows = []
    for name, label in LABELS.items():
        values = np.asarray([m[name] for m in per_image.values()], dtype=float)
        rows.append((label, overall[name], ci_text(ci95, name), float(np.median(values)),
                     float(values.min())))
    return rows


def write_reports(out: Path, title: str, per_image: dict[str, dict[str, float]],
                  overall: dict[str, float], histogram: str, gallery: dict[str, list[dict]],
                  notes: Sequence[str] = (), ci95: dict[str, list[float]] | None = None,
                  sections: Sequence[ReportSection] = ()) -> None:
    """report.md in `out`, linking the histogram and gallery PNGs (relative), and
    report.html with them embedded.

    `ci95`: metric -> [low, high] bootstrap interval of the mean (None: none, e.g. 1 image).
    `sections`: shown first, after the notes (failures, the quality estimate).
    """
    rows = metric_rows(per_image, overall, ci95)
    md = [f"# {md_text(title)}", "", *[f"- {md_text(n)}" for n in notes], ""]
    for section in sections:
        md += [f"## {md_text(section.title)}", "", *section.markdown, ""]
        if section.picture:
            md += [f"![{md_text(section.title)}]({quote(section.picture)})", ""]
    md += [f"{_images(len(per_image))}. {_about_means(ci95)}", "",
          "| metric | mean | 95% CI | median | min |", "|---|---:|---:|---:|---:|"]
    md += [f"| {label} | {mean:.4f} | {ci} | {med:.4f} | {low:.4f} |"
           for label, mean, ci, med, low in rows]
    md += ["", *[f"- **{LABELS[name]}**: {md_text(text)}" for name, text in DEFINITIONS.items()]]
    md += ["", f"![Per-image Jaccard]({histogram})", ""]
    for group in (g for g in ("best", "worst") if gallery[g]):
        md += [f"## {group.capitalize()} cases ({LEGEND})", ""]
        md += [f"![{md_text(e['id'])} Jaccard {e['jaccard']:.3f}]({quote(e['file'])}) "
               f"{md_text(e['id'])} Jaccard {e['jaccard']:.3f}" for e in gallery[group]]
        md.append("")
    write_bytes_atomic(out / "report.md", "\n".join(md).encode())
    page = _html(out, title, rows, per_image, histogram, gallery, notes, ci95, sections)
    write_bytes_atomic(out / "report.html", page.encode())


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _about_means(ci95) -> str:
    text = "Mean = the official ISIC macro average over images"
    if ci95 is None:
        return text + "; no confidence interval (it needs at least 2 images)."
    return text + "; 95% CI = percentile bootstrap over images."


def md_text(text: str) -> str:
    """Text for Markdown: HTML special characters, backslash, backtick, * and brackets escaped."""
    return "".join(f"\\{c}" if c in "\\`*[]" else c for c in html.escape(text))


def embedded_png(path: Path) -> str:
    """A PNG file as a data: URI, for a page that carries its own pictures."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _picture(out: Path, file: str, alt: str) -> str:
    """<img> of the PNG out/file, embedded; `data-file` names the file beside the report."""
    esc = html.escape
    return (f"<img src='{embedded_png(out / file)}' data-file='{esc(quote(file))}' "
            f"alt='{esc(alt)}'>")


def _legend() -> str:
    swatch = "<span style='display:inline-block;width:2em;height:0.5em;background:rgb{}'></span>"
    return (f"<p>{swatch.format(TRUTH_COLOUR)} ground truth &nbsp; "
            f"{swatch.format(PRED_COLOUR)} prediction</p>")


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;"
         "text-align:right}td:first-child{text-align:left}"
         "figure{display:inline-block;margin:6px;text-align:center}dt{font-weight:bold}")


def _html(out, title, rows, per_image, histogram, gallery, notes, ci95=None,
          sections: Sequence[ReportSection] = ()) -> str:
    esc = html.escape
    table = "".join(f"<tr><td>{esc(label)}</td><td>{mean:.4f}</td><td>{ci}</td>"
                    f"<td>{med:.4f}</td><td>{low:.4f}</td></tr>"
                    for label, mean, ci, med, low in rows)
    definitions = "".join(f"<dt>{esc(LABELS[name])}</dt><dd>{esc(text)}</dd>"
                          for name, text in DEFINITIONS.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>", *[f"<p>{esc(n)}</p>" for n in notes],
        *[f"<h2>{esc(section.title)}</h2>{section.html}"
          + (_picture(out, section.picture, section.title) if section.picture else "")
          for section in sections],
        f"<p>{_images(len(per_image))}. {esc(_about_means(ci95))}</p>",
        "<table><tr><th>metric</th><th>mean</th><th>95% CI</th><th>median</th><th>min</th>"
        "</tr>", table, "</table>", f"<dl>{definitions}</dl>",
        f"<h2>Per-image Jaccard</h2>{_picture(out, histogram, 'Jaccard histogram')}",
    ]
    for group in (g for g in ("best", "worst") if gallery[g]):
        parts += [f"<h2>{group.capitalize()} cases</h2>", _legend()]
        parts += [f"<figure>{_picture(out, e['file'], e['id'])}<figcaption>{esc(e['id'])} "
                  f"Jaccard {e['jaccard']:.3f}</figcaption></figure>" for e in gallery[group]]
    parts.append("</body></html>\n")
    return "\n".join(parts)
