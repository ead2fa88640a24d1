"""The whole pipeline in one call, on synthetic data (or the user's folder), on CPU.

synth -> check -> prepare -> train -> evaluate (test split) -> predict with overlays -> ONNX.
Every step is the library function the CLI command of the same name calls.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dermaseg.config import Config
from dermaseg.config_io import config_from_dict
from dermaseg.errors import DermasegError, UsageError
from dermaseg.invocation import dermaseg_command

MIN_TRAIN = 4  # training images the demo needs (its batch shrinks to fit down to this)
MIN_PAIRS = 6  # with the 15 % validation and test splits: 4 train, 1 val, 1 test
# Epochs trained even past --minutes (a slow or busy machine). The demo's synthetic data,
# seed 0, an 8-epoch schedule: validation Dice 0.90 after 3 epochs, 0.95 from the 5th on.
MIN_EPOCHS = 8

DEMO_RECIPE = {
    "model": {"arch": "deeplabv3plus", "backbone": "resnet18", "aspp_channels": 64,
              "decoder_channels": 64, "pretrained": None},
    "data": {"image_size": 128, "batch_size": 8, "num_workers": 0,
             "augment": {"rotate90": 0.5, "elastic_p": 0.0}},
    "optim": {"lr": 1e-3, "scheduler": "cosine", "warmup_epochs": 1, "anneal_by_time": True},
    "train": {"max_epochs": 200, "early_stop_patience": 50, "precision": "32",
              "checkpoint_every_steps": 0},
}


@dataclass
class DemoResult:
    out: Path
    lines: list[str] = field(default_factory=list)
    test_dice: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    synthetic: bool = True
    epochs: int = 0  # trained
    pace_note: str | None = None  # why fewer epochs fitted than expected (train.pace)


def demo_config(minutes: float, seed: int, min_epochs: int = MIN_EPOCHS) -> Config:
    """A ResNet-18 DeepLab-v3+ at 128 px trained for `minutes` (but at least `min_epochs`
    epochs) with a cosine schedule."""
    return config_from_dict(DEMO_RECIPE, "demo recipe").updated(
        {"train.max_minutes": minutes, "train.min_epochs": min_epochs, "train.seed": seed})


def run_demo(out: str | Path, data: str | Path | None = None, *, images: int = 160,
             minutes: float = 4.0, seed: int = 0, say: Callable[[str], None] = print,
             min_epochs: int = MIN_EPOCHS) -> DemoResult:
    """Run every stage into `out`; returns where everything is and the test-split numbers.

    Raises:
        DermasegError: a stage failed (the message names the stage's file or field).
    """
    if not minutes > 0:
        raise UsageError(f"--minutes must be > 0, got {minutes}")
    if data is None and images < MIN_PAIRS:
        raise UsageError(f"-n must be at least {MIN_PAIRS} (the split needs {MIN_TRAIN} "
                         f"training images and a test image), got {images}")
    result = DemoResult(Path(out))
    result.out.mkdir(parents=True, exist_ok=True)
    source = _stage(result, "data", say, lambda: _source_data(result.out, data, images, seed, say))
    _stage(result, "check", say, lambda: _check(source, say))
    prepared = result.out / "prepared"
    _stage(result, "prepare", say, lambda: _prepare(source, prepared, seed, say))
    run_dir = result.out / "run"
    config = demo_config(minutes, seed, min_epochs)
    config = config.updated({"data.batch_size": _batch_size(prepared, config.data.batch_size)})
    trained = _stage(result, "train", say, lambda: _train(config, prepared, run_dir, say))
    result.epochs, result.pace_note = trained["epochs"], (trained.get("pace") or {}).get("note")
    summary = _stage(result, "evaluate", say, lambda: _evaluate(
        run_dir / "best.ckpt", prepared, result.out / "eval", say))
    result.test_dice = summary["overall"]["dice"]
    _stage(result, "predict", say, lambda: _predict(
        run_dir / "best.ckpt", prepared, result.out / "predictions", say))
    _stage(result, "export", say,
           lambda: _export(run_dir / "best.ckpt", result.out / "model.onnx", source, say))
    result.synthetic = data is None
    result.lines = _explain(result, summary)
    return result


def _stage(result: DemoResult, name: str, say: Callable[[str], None], work: Callable):
    say(f"\n== {name} ==")
    start = time.perf_counter()
    value = work()
    result.seconds[name] = round(time.perf_counter() - start, 1)
    return value


def _source_data(out: Path, data: str | Path | None, images: int, seed: int,
                 say: Callable[[str], None]) -> Path:
    if data is not None:
        say(f"using your data: {data}")
        return Path(data)
    from dermaseg.data.synth import synth_dataset

    folder = out / "synthetic"
    synth_dataset(images, folder, seed=seed)
    say(f"{images} synthetic dermoscopy pairs in {folder}")
    return folder


def _check(source: Path, say: Callable[[str], None]) -> None:
    from dermaseg.data.check import check_dataset

    report = check_dataset(source, progress=False)
    say(report.format_table())


def _prepare(source: Path, prepared: Path, seed: int, say: Callable[[str], None]) -> None:
    from dermaseg.data.prepare import prepare_dataset, summary_lines

    manifest = prepare_dataset(source, prepared, size=128, seed=seed, progress=False)
    say("\n".join(summary_lines(manifest, prepared)))


def _batch_size(prepared: Path, wanted: int) -> int:
    """The recipe's batch size, or the training-split size when that is smaller (a small
    --data folder); refuses splits too small to train and test on."""
    from dermaseg.data.manifest import read_manifest

    counts = read_manifest(prepared).get("counts", {})
    train, test = counts.get("train", 0), counts.get("test", 0)
    if train < MIN_TRAIN or test < 1:
        raise DermasegError(f"{prepared}: {train} training and {test} test images; the demo "
                            f"needs at least {MIN_TRAIN} and 1 (about {MIN_PAIRS} usable pairs)")
    return min(wanted, train)


def _train(config: Config, prepared: Path, run_dir: Path, say: Callable[[str], None]) -> dict:
    """A fresh run in `run_dir`, replacing an earlier demo's (a second `make demo` works).

    Raises:
        UsageError: `run_dir` exists and is not a training run folder.
    """
    from dermaseg.train.runner import train

    if run_dir.exists():
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"{run_dir}: exists and is not a training run; choose another -o")
        say(f"replacing the earlier run in {run_dir}")
        shutil.rmtree(run_dir)
    return train(config, prepared, run_dir, progress=True)


def _evaluate(checkpoint: Path, prepared: Path, out: Path, say: Callable[[str], None]) -> dict:
    from dermaseg.evaluation.evaluate import evaluate_model, split_items
    from dermaseg.evaluation.files import write_evaluation
    from dermaseg.infer.predictor import Predictor

    predictor = Predictor.load(checkpoint)
    items = split_items(prepared, "test")
    if not items:
        raise DermasegError(f"{prepared}: the test split is empty; the demo needs at least "
                            f"{MIN_PAIRS} pairs")
    evaluation = evaluate_model(predictor, items, progress=False)
    summary = write_evaluation(evaluation, out, "dermaseg demo: test split",
                               [f"model: {checkpoint}", f"data: {prepared} (split test)"])
    overall = summary["overall"]
    say(f"{checkpoint.name} scored on {_images(len(items))} of the test split against their "
        f"masks: Dice {overall['dice']:.4f}, IoU {overall['jaccard']:.4f} (mean over images)")
    say(f"report: {out / 'report.html'}; a row per image: {out / 'metrics.csv'}")
    return summary


def _predict(checkpoint: Path, prepared: Path, out: Path, say: Callable[[str], None]) -> None:
    from dermaseg.evaluation.evaluate import split_items
    from dermaseg.infer.batch import PredictOptions, predict_files
    from dermaseg.infer.predictor import Predictor

    files = [image for _, image, _ in split_items(prepared, "test")[:6]]
    options = PredictOptions(overwrite=True, overlay=True, measure=True, progress=False)
    done = predict_files(Predictor.load(checkpoint), files, out, options)
    say(f"{_images(len(done.written))} of the test split predicted at their own size into "
        f"{out}: masks <id>_segmentation.png (0/255), contours on the image in overlay/")
    say(f"measurements (area, asymmetry, colours ...): {out / 'measurements.csv'} (a row per "
        "image) and measurements.jsonl")
    say(f"quality: {out / 'quality.csv'} (each mask's estimated Jaccard and review flag); "
        f"review recommended for {len(done.review)} of {len(done.written)}")


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _export(checkpoint: Path, onnx_path: Path, source: Path,
            say: Callable[[str], None]) -> None:
    from dermaseg.checkpoint import load_model
    from dermaseg.export.calibration import calibration_images
    from dermaseg.export.parity import export_onnx_checked

    model, meta = load_model(checkpoint)
    images, _ = calibration_images(source, 4, meta.image_size, progress=False)
    export_onnx_checked(model, meta, onnx_path, images, opset=18, exporter="auto", say=say)


def _explain(result: DemoResult, summary: dict) -> list[str]:
    overall, out = summary["overall"], result.out
    return [
        "",
        "== what the demo made ==",
        f"  {out / 'run'}: config.yaml, best.ckpt, last.ckpt, metrics.csv, curves.png",
        f"  {out / 'eval'}: report.html (table, Jaccard histogram, best/worst gallery), "
        "metrics.csv per image",
        f"  {out / 'predictions'}: *_segmentation.png (0/255 at original size), overlay/, "
        "measurements.csv (a row per image) and .jsonl, quality.csv (estimated Jaccard, "
        "review flag)",
        f"  {out / 'model.onnx'}: the model for ONNX Runtime / `dermaseg serve`",
        "",
        "== test-split numbers (macro mean over images, official ISIC conventions) ==",
        f"  Dice              {overall['dice']:.4f}  overlap 2|P∩T|/(|P|+|T|); 1 is perfect",
        f"  IoU (Jaccard)     {overall['jaccard']:.4f}  |P∩T|/|P∪T|",
        f"  threshold-Jaccard {overall['threshold_jaccard']:.4f}  Jaccard, 0 for images "
        "below 0.65 (ISIC 2018 ranking)",
        f"  sensitivity       {overall['sensitivity']:.4f}  lesion pixels found",
        f"  specificity       {overall['specificity']:.4f}  skin pixels left alone",
        *judgement(result),
        "",
        "seconds per stage: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()),
        f"next: {dermaseg_command()} serve {shlex.quote(str(out / 'model.onnx'))} --port 8000"
        "   (then open http://127.0.0.1:8000)",
    ]


def judgement(result: DemoResult) -> list[str]:
    """What the numbers mean: the synthetic task is easy, so after MIN_EPOCHS epochs a poor
    Dice is a fault; a machine too busy for the time budget is named as the cause of fewer
    epochs, not taken for one."""
    lines = [f"  Training was slowed, not broken: {result.pace_note}."] if result.pace_note \
        else []
    epochs = f"{result.epochs} epoch{'' if result.epochs == 1 else 's'}"
    if not result.synthetic:
        return [*lines, f"  Your data, 128 px, {epochs} on the CPU: train longer with "
                "`dermaseg train` and a recipe."]
    if result.epochs >= MIN_EPOCHS:
        return [*lines, f"  The synthetic task is easy: after {epochs}, a Dice below 0.90 "
                "here means something is broken."]
    return [*lines, f"  Only {epochs} trained (fewer than the demo's {MIN_EPOCHS}): the "
            "Dice says little yet; rerun with more --minutes."]
