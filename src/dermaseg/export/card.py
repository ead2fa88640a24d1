"""The model card of a shared model folder: `README.md` with the YAML front matter model hubs
read (license, library_name, tags, metrics, model-index), written with huggingface_hub's
ModelCard; the numbers come only from an evaluation the user points to (`metrics.json` of
`dermaseg evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dermaseg.errors import DermasegError, UsageError
from dermaseg.model_meta import ModelMeta

TAGS = ["image-segmentation", "medical-imaging", "dermoscopy", "skin-lesion", "deeplabv3",
        "pytorch", "safetensors"]
# metrics.json "overall" key -> (hub metric type, shown name)
CARD_METRICS = {"dice": ("dice", "Dice"), "jaccard": ("jaccard", "IoU (Jaccard)"),
                "threshold_jaccard": ("threshold_jaccard", "ISIC threshold Jaccard"),
                "sensitivity": ("recall", "Sensitivity"),
                "specificity": ("specificity", "Specificity"),
                "accuracy": ("accuracy", "Accuracy"), "precision": ("precision", "Precision")}


def read_evaluation(path: Path) -> dict[str, Any]:
    """metrics.json of `dermaseg evaluate` (the file, or the report folder holding it).

    Raises:
        UsageError: no such file; DermasegError: not an evaluation summary.
    """
    file = path / "metrics.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--card-eval {path}: no such file (give the metrics.json that "
                         "`dermaseg evaluate` writes, or its report folder)") from None
    except (OSError, ValueError) as exc:
        raise DermasegError(f"--card-eval {file}: not a readable JSON file ({exc})") from exc
    overall = data.get("overall") if isinstance(data, dict) else None
    if not isinstance(overall, dict) or "dice" not in overall:
        raise DermasegError(f"--card-eval {file}: not an evaluation summary (no overall.dice; "
                            "`dermaseg evaluate` writes metrics.json)")
    return data


def _dataset_name(evaluation: dict[str, Any]) -> str:
    """"prepared (split test)" from the evaluation's "data: PATH (split test)" note."""
    note = next((n for n in evaluation.get("notes", []) if str(n).startswith("data: ")), None)
    if note is None:
        return "evaluation images"
    path, _, split = note[len("data: "):].partition(" (")
    return f"{Path(path).name} ({split}" if split else Path(path).name


def card_text(name: str, meta: ModelMeta, training_data: dict[str, Any] | None,
              evaluation: dict[str, Any] | None, license: str) -> str:
    """The README.md of a model folder named `name`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = []
    if evaluation is not None:
        dataset = _dataset_name(evaluation)
        results = [EvalResult(task_type="image-segmentation", dataset_type="dermoscopy",
                              dataset_name=dataset, metric_type=kind, metric_name=label,
                              metric_value=round(float(evaluation["overall"][key]), 4))
                   for key, (kind, label) in CARD_METRICS.items()
                   if key in evaluation["overall"]]
    data = ModelCardData(license=license, library_name="dermaseg", tags=TAGS,
                         pipeline_tag="image-segmentation", model_name=name,
                         metrics=[r.metric_type for r in results] or None,
                         eval_results=results or None)
    body = _body(name, meta, training_data, evaluation)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _body(name: str, meta: ModelMeta, training_data: dict[str, Any] | None,
          evaluation: dict[str, Any] | None) -> str:
    model = meta.config.model
    lines = [f"# {name}", "",
             f"Skin-lesion segmentation of dermoscopy images: {model.arch} with a "
             f"{model.backbone} backbone, trained with [dermaseg](https://pypi.org/project/"
             f"dermaseg/) {meta.version}. Not a medical device.", "",
             "## Use", "", "```", "pip install dermaseg",
             f"dermaseg predict hf://OWNER/{name} photos/ -o masks/   # or this folder's path",
             f"dermaseg serve hf://OWNER/{name}", "```", "",
             "## Preprocessing", "",
             f"- input: the image resized keeping its aspect ratio and padded to "
             f"{meta.image_size} x {meta.image_size} px",
             *_colour_lines(meta),
             f"- normalisation: mean {meta.mean}, std {meta.std} (RGB, 0..1)",
             f"- mask: lesion probability > {meta.threshold}, at the image's own size", "",
             "The whole recipe is in `dermaseg.json` (`config`).", ""]
    if training_data:
        lines += ["## Training data", "",
                  f"Prepared split fingerprint: `{training_data.get('fingerprint')}`", ""]
    lines += ["## Evaluation", ""] + (_results(evaluation) if evaluation else [
        "No evaluation was given (`dermaseg export ... --card-eval eval-test/metrics.json`): "
        "this card states no metrics.", ""])
    return "\n".join(lines)


def _colour_lines(meta: ModelMeta) -> list[str]:
    """The card's line for `data.colour_constancy` (none without one: cards stay as they were)."""
    data = meta.config.data
    if data.colour_constancy == "none":
        return []
    return [f"- colour constancy: {data.colour_constancy} (p = {data.colour_constancy_p:g}) on "
            "the padded input, before the normalisation"]


def _results(evaluation: dict[str, Any]) -> list[str]:
    overall, ci95 = evaluation["overall"], evaluation.get("ci95") or {}
    lines = [f"On {_dataset_name(evaluation)}, {evaluation.get('images', '?')} images (mean over "
             "images, ISIC conventions; 95% bootstrap interval):", "",
             "| metric | value | 95% CI |", "|---|---|---|"]
    for key, (_, label) in CARD_METRICS.items():
        if key in overall:
            low_high = ci95.get(key)
            interval = f"{low_high[0]:.4f}-{low_high[1]:.4f}" if low_high else "-"
            lines.append(f"| {label} | {overall[key]:.4f} | {interval} |")
    return [*lines, ""]
