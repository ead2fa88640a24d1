"""The quality estimate (dermaseg.quality) judged on images its fit never saw.

Two steps, so that the slow one (the network) runs once per model and image set:

    # signals and actual Jaccard of every image (and of its degraded copies, --degrade)
    python bench/quality_estimate.py rows MODEL --data PREP --split val --degrade -o fit.json
    python bench/quality_estimate.py rows MODEL --data RAW_OTHER_SOURCE -o unseen.json
    # fit the estimator on one set, judge it and the baseline on another
    python bench/quality_estimate.py judge fit.json unseen.json --label "PH2 -> ISIC 2016"

`judge` prints one Markdown row per variant (with and without the degraded copies, one pass
and four flips) and appends them as JSON to --json. The baseline is one pass's share of
uncertain pixels (0.2..0.8) relative to the mask's area.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from dermaseg.evaluation.calibrate import Row, calibration_rows, fit_estimator, held_out_pairs
from dermaseg.evaluation.evaluate import source_items
from dermaseg.evaluation.quality_check import auroc, spearman, worst_capture
from dermaseg.infer.predictor import Predictor
from dermaseg.quality import FAILURE_JACCARD


def rows_command(args: argparse.Namespace) -> None:
    predictor = Predictor.load(args.model, batch_size=8)
    items, _ = source_items(Path(args.data), args.split)
    pairs = held_out_pairs(items, predictor.meta.image_size)
    rows = calibration_rows(predictor, pairs, len(items), degrade=args.degrade)
    Path(args.out).write_text(json.dumps([dataclasses.asdict(row) for row in rows]))
    print(f"{len(rows)} rows of {len(items)} images -> {args.out}")


def _read(path: str) -> list[Row]:
    return [Row(**row) for row in json.loads(Path(path).read_text())]


def _scores(risk: np.ndarray, actual: np.ndarray, estimated=None) -> dict:
    failed = actual < FAILURE_JACCARD
    mae = None if estimated is None else float(np.abs(estimated - actual).mean())
    return {"auroc": auroc(risk, failed), "spearman": spearman(-risk, actual),
            "worst_10pct_capture": worst_capture(risk, failed), "mae": mae,
            "failures": int(failed.sum()), "images": len(actual)}


def judge_command(args: argparse.Namespace) -> None:
    fit_rows, target = _read(args.fit), [r for r in _read(args.on) if r.degradation == "none"]
    results = {}
    plain = np.array([r.one_pass_jaccard for r in target])
    ratio = np.array([r.one_pass["uncertain_ratio"] for r in target])
    results["baseline (uncertain/mask, one pass)"] = _scores(ratio, plain)
    for degraded in (False, True):
        rows = fit_rows if degraded else [r for r in fit_rows if r.degradation == "none"]
        estimator = fit_estimator(rows, {})
        name = "with degraded copies" if degraded else "held-out images only"
        for kind, linear, actual, signals in (
                ("one pass", estimator.one_pass, plain, [r.one_pass for r in target]),
                ("4 flips", estimator.views, np.array([r.views_jaccard for r in target]),
                 [r.views for r in target])):
            estimated = np.array([linear(values) for values in signals])
            results[f"estimate, {kind}, fit {name}"] = _scores(-estimated, actual, estimated)
    print(f"\n{args.label}: fit on {args.fit}, judged on {args.on}\n")
    print("| variant | images | failures | AUROC | Spearman | MAE | failures in worst 10 % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    show = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, s in results.items():
        print(f"| {name} | {s['images']} | {s['failures']} | {show(s['auroc'])} | "
              f"{show(s['spearman'])} | {show(s['mae'])} | {show(s['worst_10pct_capture'])} |")
    if args.json:
        path = Path(args.json)
        kept = json.loads(path.read_text()) if path.exists() else {}
        kept[args.label] = {"fit": args.fit, "on": args.on, "results": results}
        path.write_text(json.dumps(kept, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    rows = commands.add_parser("rows")
    rows.add_argument("model")
    rows.add_argument("--data", required=True)
    rows.add_argument("--split", default="val")
    rows.add_argument("--degrade", action="store_true")
    rows.add_argument("-o", "--out", required=True)
    rows.set_defaults(run=rows_command)
    judge = commands.add_parser("judge")
    judge.add_argument("fit")
    judge.add_argument("on")
    judge.add_argument("--label", default="")
    judge.add_argument("--json")
    judge.set_defaults(run=judge_command)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
