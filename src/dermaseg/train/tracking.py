"""Experiment tracking through Lightning's own loggers: TensorBoard, MLflow, Weights & Biases.

Opt-in (`train.loggers` in the recipe, or `dermaseg train --logger NAME`); each needs its extra
(`pip install 'dermaseg[tensorboard]'`, `[mlflow]`, `[wandb]`). They receive what the run's own
files hold: the resolved config as hyper-parameters at the start, each metrics.csv row (step =
the epoch) when it is written, then the best epoch's metrics (`best_val_dice` ...) with
curves.png, summary.json and config.yaml where the logger keeps files.

Where each writes, for RUN_DIR:
- tensorboard: RUN_DIR/tensorboard/ (`tensorboard --logdir RUN_DIR`);
- mlflow: `train.tracking_uri`, by default a local store in RUN_DIR/mlruns/ (mlflow.db, and
  artifacts/), experiment `train.experiment`, run named after RUN_DIR;
- wandb: project `train.experiment`, files in RUN_DIR/wandb/; WANDB_MODE=offline keeps the run
  on disk (`wandb sync` uploads it later).

A resumed run goes on in the same MLflow and W&B runs: their ids are kept in RUN_DIR/tracking.json.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from dermaseg.config import Config, dotted
from dermaseg.errors import UsageError
from dermaseg.fileio import write_json_atomic

# logger -> (module it imports, the extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}
IDS_FILE = "tracking.json"
ARTIFACTS = ("curves.png", "summary.json", "config.yaml")


def check_trackers(names: Sequence[str]) -> None:
    """Raises UsageError naming the extra to install for a logger whose package is missing."""
    for name in names:
        module, extra = TRACKERS[name]
        if not _installed(module):
            raise UsageError(f"train.loggers: {name} needs the {module} package, not installed "
                             f"here: pip install 'dermaseg[{extra}]'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken package, or an import blocked in sys.modules
        return False


def mlflow_uri(config: Config, out_dir: Path) -> str:
    """train.tracking_uri, or a local SQLite store in RUN_DIR/mlruns/."""
    if config.train.tracking_uri:
        return config.train.tracking_uri
    return f"sqlite:///{(out_dir / 'mlruns' / 'mlflow.db').absolute()}"


def build_loggers(config: Config, out_dir: Path, resume: bool) -> list[Logger]:
    """The Lightning loggers `config.train.loggers` names, writing for the run in `out_dir`
    (resumed: continuing the runs recorded in tracking.json)."""
    ids = _read_ids(out_dir) if resume else {}
    experiment, name = config.train.experiment, out_dir.absolute().name
    loggers: list[Logger] = []
    for tracker in dict.fromkeys(config.train.loggers):
        if tracker == "tensorboard":
            loggers.append(TensorBoardLogger(out_dir, name="tensorboard", version="",
                                             default_hp_metric=False))
        elif tracker == "mlflow":
            loggers.append(_mlflow(config, out_dir, ids.get("mlflow")))
        elif tracker == "wandb":
            loggers.append(WandbLogger(project=experiment, name=name, save_dir=str(out_dir),
                                       id=ids.get("wandb") or uuid.uuid4().hex[:8],
                                       resume="allow"))
    return loggers


def _mlflow(config: Config, out_dir: Path, run_id: str | None) -> MLFlowLogger:
    local = None
    if not config.train.tracking_uri:  # a server keeps the artifacts where it is set up to
        (out_dir / "mlruns").mkdir(parents=True, exist_ok=True)
        local = (out_dir / "mlruns" / "artifacts").absolute().as_uri()
    return MLFlowLogger(experiment_name=config.train.experiment, run_name=out_dir.absolute().name,
                        tracking_uri=mlflow_uri(config, out_dir), artifact_location=local,
                        run_id=run_id)


def _read_ids(out_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((out_dir / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_ids(loggers: list[Logger]) -> dict[str, str]:
    """{"mlflow": run id, "wandb": run id} of the loggers that have one."""
    ids = {}
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            ids["mlflow"] = logger.run_id
        elif isinstance(logger, WandbLogger):
            ids["wandb"] = logger.version
    return {key: value for key, value in ids.items() if value}


class Tracking(Callback):
    """Sends the config at the start and each row `history` adds to the trainer's loggers."""

    def __init__(self, config: Config, out_dir: Path, history: Any) -> None:
        self.config, self.out_dir, self.history = config, out_dir, history
        self._sent = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sent = len(self.history.rows)  # a resumed run's earlier rows were sent before
        if not trainer.is_global_zero:
            return
        nested = self.config.to_dict()
        for logger in trainer.loggers:  # W&B shows sections; the others, the --set keys
            logger.log_hyperparams(nested if isinstance(logger, WandbLogger) else dotted(nested))
        ids = run_ids(trainer.loggers)
        if ids:
            write_json_atomic(self.out_dir / IDS_FILE, ids)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for row in self.history.rows[self._sent:]:
            metrics = {k: float(v) for k, v in row.items() if k != "epoch"}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(row["epoch"]))
        self._sent = len(self.history.rows)


def log_outcome(loggers: list[Logger], out_dir: Path, summary: dict[str, Any]) -> None:
    """After the run: the best epoch's metrics and the run's files, then close the loggers."""
    best = {f"best_{k}": float(v) for k, v in (summary.get("best") or {}).items()
            if isinstance(v, (int, float))}
    step = int(summary.get("best_epoch") or 0)
    files = [out_dir / name for name in ARTIFACTS if (out_dir / name).is_file()]
    for logger in loggers:
        if best:
            logger.log_metrics(best, step=step)
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_files(logger, files, summary, step)
        elif isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update({"best_epoch": step, **best})
            for path in files:  # its own config.yaml holds the config already
                if path.name != "config.yaml":
                    run.save(str(path), base_path=str(out_dir), policy="now")
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def _tensorboard_files(logger: TensorBoardLogger, files: list[Path], summary: dict[str, Any],
                       step: int) -> None:
    """TensorBoard keeps no files: curves.png as an image, summary.json as text."""
    import numpy as np
    from PIL import Image

    writer = logger.experiment
    for path in files:
        if path.suffix == ".png":
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(path.stem, pixels, step, dataformats="HWC")
    text = json.dumps(summary, indent=2)
    writer.add_text("summary", f"```\n{text}\n```", step)
