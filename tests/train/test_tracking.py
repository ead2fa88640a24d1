"""Experiment tracking: one tiny 2-epoch run sent to TensorBoard, MLflow and W&B (offline) at
once, read back with each library's own reader; the metrics must be those of metrics.csv and
summary.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dermaseg.train.runner import train
from helpers.training import Interrupt, InterruptAt, read_rows, run_cli, tiny

pytestmark = pytest.mark.usefixtures("one_thread")
TRACKERS = ("tensorboard", "mlflow", "wandb")
for _module in TRACKERS:
    pytest.importorskip(_module)


@pytest.fixture(scope="module")
def tracked(tiny_prepared, tmp_path_factory):
    """(run folder, summary, metrics.csv rows) of a run with all three trackers."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                            "WANDB_CONFIG_DIR": home, "WANDB_CACHE_DIR": home,
                            "WANDB_DATA_DIR": home}.items():
            patch.setenv(name, str(value))
        config = tiny("train.max_epochs=2", "train.loggers=[tensorboard, mlflow, wandb]")
        summary = train(config, tiny_prepared, out, progress=False)
    return out, summary, read_rows(out / "metrics.csv")


def test_tensorboard_event_files(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, summary, rows = tracked
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    dice = events.Scalars("val_dice")
    assert [e.step for e in dice] == [int(r["epoch"]) for r in rows]
    assert [e.value for e in dice] == pytest.approx([float(r["val_dice"]) for r in rows],
                                                   abs=1e-5)
    for name in ("train_loss", "val_loss", "val_iou", "lr"):
        assert len(events.Scalars(name)) == len(rows), name
    assert events.Scalars("best_val_dice")[0].value == pytest.approx(
        summary["best"]["val_dice"], rel=1e-6)
    assert events.Images("curves")[0].width > 600
    assert events.Tensors("summary/text_summary")


def test_mlflow_local_store(tracked):
    from mlflow.tracking import MlflowClient

    out, summary, rows = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dermaseg")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert json.loads((out / "tracking.json").read_text())["mlflow"] == run.info.run_id
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [int(r["epoch"]) for r in rows]
    assert max(m.value for m in history) == pytest.approx(summary["best"]["val_dice"], rel=1e-6)
    assert run.data.metrics["best_val_dice"] == pytest.approx(summary["best"]["val_dice"],
                                                              rel=1e-6)
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.backbone"] == "mobilenetv3_large_100"
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "summary.json", "config.yaml"} <= files
    local = client.download_artifacts(run.info.run_id, "summary.json", str(out / "fetched"))
    assert json.loads(Path(local).read_text()) == summary


def test_wandb_offline_run_folder(tracked):
    from helpers.wandb_records import history, updates

    out, summary, rows = tracked
    (folder,) = (out / "wandb").glob("offline-run-*")
    (record,) = folder.glob("run-*.wandb")  # what `wandb sync` uploads
    assert record.stem == f"run-{json.loads((out / 'tracking.json').read_text())['wandb']}"
    logged = [row for row in history(record) if "val_dice" in row]
    assert [row["trainer/global_step"] for row in logged] == [int(r["epoch"]) for r in rows]
    assert [row["val_dice"] for row in logged] == pytest.approx(
        [float(r["val_dice"]) for r in rows], abs=1e-5)
    assert updates(record, "summary")["best_val_dice"] == pytest.approx(
        summary["best"]["val_dice"], rel=1e-6)
    config = updates(record, "config")
    assert config["optim"]["lr"] == 0.001 and config["train"]["loggers"] == list(TRACKERS)
    files = folder / "files"
    assert json.loads((files / "summary.json").read_text()) == summary
    assert (files / "curves.png").stat().st_size > 0


def test_own_files_unchanged(tracked):
    out, summary, rows = tracked
    assert json.loads((out / "summary.json").read_text()) == summary
    assert [int(r["epoch"]) for r in rows] == [0, 1]


def test_missing_package_names_the_extra(tiny_prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    out = tmp_path / "run"
    code, err = run_cli(monkeypatch, capsys, "--config", "cpu_small", "--data",
                        str(tiny_prepared), "-o", str(out), "--logger", "wandb")
    assert code != 0
    assert "wandb" in err and "pip install 'dermaseg[wandb]'" in err
    assert not out.exists()  # refused before the run folder is written


def test_unknown_logger_refused(tiny_prepared, tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "--config", "cpu_small", "--data",
                        str(tiny_prepared), "-o", str(tmp_path / "run"), "--logger", "comet")
    assert code != 0 and "--logger comet" in err and "tensorboard" in err


def test_resumed_run_goes_on_in_the_same_mlflow_run(tiny_prepared, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    config = tiny("train.max_epochs=2", "train.loggers=[mlflow]")
    with pytest.raises(Interrupt):  # in epoch 1, after epoch 0's row was sent
        train(config, tiny_prepared, out, progress=False, callbacks=[InterruptAt(6)])
    summary = train(config, tiny_prepared, out, resume=True, progress=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dermaseg").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [0, 1] and run.info.status == "FINISHED"
    assert max(m.value for m in history) == pytest.approx(summary["best"]["val_dice"], rel=1e-6)
