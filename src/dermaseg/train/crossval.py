"""The result of a cross-validation: each fold run's best validation scores, mean and std.

A fold run is a `dermaseg train --fold K` run folder (summary.json + config.yaml). Runs are
only compared when they come from the same prepared data (the split fingerprint in their
summary.json) and the same config except `data.fold`, each fold at most once.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from dermaseg.config import dotted
from dermaseg.config_io import load_config
from dermaseg.errors import DermasegError, UsageError

METRICS = ("val_dice", "val_iou")


def read_fold_run(run: Path) -> dict[str, Any]:
    """One fold run: {"run", "fold", "best_epoch", "val_dice", "val_iou", "data", "config"}.

    Raises:
        UsageError: not a finished run, not a --fold run, or no validation result.
    """
    path = run / "summary.json"
    if not path.is_file() or not (run / "config.yaml").is_file():
        raise UsageError(f"{run}: no summary.json + config.yaml, not a finished `dermaseg "
                         "train` run")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DermasegError(f"{path}: unreadable ({exc})") from exc
    if summary.get("fold") is None:
        raise UsageError(f"{path}: no fold, not a cross-validation run (train with --fold K)")
    best = summary.get("best") or {}
    if any(best.get(name) is None for name in METRICS):
        raise UsageError(f"{path}: no validation Dice/IoU (did the run finish an epoch?)")
    config = dotted(load_config(run / "config.yaml").to_dict())
    return {"run": str(run), "fold": summary["fold"], "best_epoch": summary.get("best_epoch"),
            **{name: best[name] for name in METRICS}, "data": summary.get("data") or {},
            "config": config}


def _check_comparable(runs: list[dict[str, Any]]) -> None:
    """Raises UsageError naming the runs and what differs; `runs` are sorted by fold."""
    for run, following in zip(runs, runs[1:], strict=False):
        if run["fold"] == following["fold"]:
            raise UsageError(f"{run['run']} and {following['run']}: both are fold {run['fold']}")
    first = runs[0]
    for other in runs[1:]:
        names = f"{first['run']} and {other['run']}"
        if other["data"].get("fingerprint") != first["data"].get("fingerprint"):
            paths = first["data"].get("path"), other["data"].get("path")
            where = (f"{paths[0]}, prepared again between the runs" if paths[0] == paths[1]
                     else f"{paths[0]} vs {paths[1]}")
            raise UsageError(f"{names}: trained on different data (summary.json data.fingerprint;"
                             f" {where})")
        diffs = sorted(key for key in first["config"].keys() | other["config"].keys()
                       if key != "data.fold" and first["config"].get(key)
                       != other["config"].get(key))
        if diffs:
            raise UsageError(f"{names}: different configs ({', '.join(diffs)}); the folds of a "
                             "cross-validation differ only in data.fold")


def cv_summary(run_dirs: list[Path]) -> dict[str, Any]:
    """{"folds", "missing_folds", "runs": [per fold], "mean": {...}, "std": {...}} of the runs
    (std: sample standard deviation over folds, null with one run).

    Raises:
        UsageError: no run, a run that is not a finished fold run, or runs that differ in data
            or config (the field named), or the same fold twice.
    """
    if not run_dirs:
        raise UsageError("cv-summary: give the run folders of the folds (runs/fold0 ...)")
    runs = sorted((read_fold_run(Path(run)) for run in run_dirs), key=lambda r: r["fold"])
    _check_comparable(runs)
    folds = runs[0]["data"].get("folds")
    rows = [{key: run[key] for key in ("fold", "run", "best_epoch", *METRICS)} for run in runs]
    return {
        "folds": folds,
        "missing_folds": [k for k in range(folds or 0) if k not in {r["fold"] for r in runs}],
        "runs": rows,
        "mean": {name: statistics.fmean(r[name] for r in rows) for name in METRICS},
        "std": {name: statistics.stdev([r[name] for r in rows]) if len(rows) > 1 else None
                for name in METRICS},
    }


def cv_lines(result: dict[str, Any]) -> list[str]:
    """The table `dermaseg cv-summary` prints."""
    lines = [f"{'fold':>4}  {'best epoch':>10}  {'val Dice':>8}  {'val IoU':>8}  run"]
    lines += [f"{r['fold']:>4}  {r['best_epoch']:>10}  {r['val_dice']:>8.4f}  "
              f"{r['val_iou']:>8.4f}  {r['run']}" for r in result["runs"]]

    def spread(name: str) -> str:
        std = result["std"][name]
        return f"{result['mean'][name]:.4f} ± " + ("n/a" if std is None else f"{std:.4f}")

    lines.append(f"mean ± std over {len(result['runs'])} of {result['folds']} folds: "
                 f"val Dice {spread('val_dice')}, val IoU {spread('val_iou')}")
    if result["missing_folds"]:
        lines.append("missing folds: " + ", ".join(map(str, result["missing_folds"])))
    return lines
