"""A training run's folder: the config it was started with, the data it trained on
(data.json), and whether a new run or a resume may use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dermaseg.config import Config
from dermaseg.config_io import load_config
from dermaseg.data.manifest import read_manifest
from dermaseg.data.splits import split_fingerprint
from dermaseg.errors import UsageError


def load_run_config(out_dir: Path, overrides: list[str] | None) -> Config:
    """The resolved config saved in RUN_DIR, with `section.key=value` overrides applied.

    Raises:
        UsageError: no config.yaml, or the overrides change the run's cross-validation fold.
    """
    path = out_dir / "config.yaml"
    if not path.is_file():
        raise UsageError(f"{out_dir}: no config.yaml, not a run folder to resume")
    config, saved = load_config(path, overrides), load_config(path)
    if config.data.fold != saved.data.fold:  # the run's validation set cannot change midway
        raise UsageError(f"--fold {config.data.fold}: {path} trains data.fold="
                         f"{saved.data.fold}; resume it without --fold, or use another -o")
    return config


def check_resume_config(given: Config, saved: Config, out_dir: Path) -> None:
    """Raises UsageError listing the fields where a config given with --resume differs."""
    a, b = given.to_dict(), saved.to_dict()
    diffs = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b.get(s, {}).get(k)]
    if diffs:
        raise UsageError(
            f"{out_dir}/config.yaml: the run was started with a different config "
            f"({', '.join(diffs)}); drop --config to resume it as it was, or use another -o")


def check_run_paths(data_dir: Path, out_dir: Path, resume: bool) -> Path | None:
    if not data_dir.is_dir():
        raise UsageError(f"--data {data_dir}: no such folder (make one with "
                         "`dermaseg data prepare IMAGES/ -o PREPARED/`)")
    if not (data_dir / "manifest.json").is_file():
        raise UsageError(f"--data {data_dir}: no manifest.json, not a prepared dataset (make one "
                         "with `dermaseg data prepare IMAGES/ -o PREPARED/`)")
    last = out_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            early = (" (written at most once per train.checkpoint_every_minutes: the run "
                     "stopped before its first; best.ckpt holds its best weights)"
                     if (out_dir / "best.ckpt").is_file() else "")
            raise UsageError(f"{last}: not found, nothing to resume{early}")
        if (out_dir / "summary.json").is_file():
            raise UsageError(f"{out_dir}: this run has finished ({how_it_ended(out_dir)}), "
                             "nothing to resume; train a new run with another -o")
        check_same_data(data_dir, out_dir)
        return last
    if last.exists() or (out_dir / "best.ckpt").exists():
        raise UsageError(f"{out_dir}: already holds a run (last.ckpt); add --resume to "
                         "continue it, or choose another -o")
    return None


DATA_RECORD = "data.json"  # the prepared data a run started on (data_identity)


def check_same_data(data_dir: Path, out_dir: Path) -> None:
    """A run resumes on the data it started on: another split would change what it trains
    on and what chose best.ckpt. Runs without data.json (older versions) are not checked."""
    try:
        started = json.loads((out_dir / DATA_RECORD).read_text())
    except (OSError, ValueError):
        return
    now = data_identity(data_dir)
    if started.get("fingerprint") != now["fingerprint"]:
        same = " (prepared again since)" if started.get("path") == now["path"] else ""
        raise UsageError(
            f"--data {data_dir}: {out_dir} started on {started.get('path')}{same}, whose "
            "items or splits differ from these; resume it with that data, or train a new run "
            "with another -o")


def how_it_ended(out_dir: Path) -> str:
    """"stopped by early_stopping after 27 epochs", from the run's summary.json."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
        return f"stopped by {summary['stopped_by']} after {summary['epochs']} epochs"
    except (OSError, ValueError, KeyError, TypeError):
        return "summary.json written"


def data_identity(data_dir: Path) -> dict[str, Any]:
    """summary.json's "data": the prepared folder, its folds and split fingerprint."""
    manifest = read_manifest(data_dir)
    return {"path": str(data_dir.absolute()), "folds": manifest.get("folds"),
            "fingerprint": split_fingerprint(manifest)}
