"""Cross-validation: `data prepare --folds`, `train --fold`, `cv-summary` (synthetic data).

The training runs are one epoch of the tiny model of tests/helpers/training.py, on one torch thread.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest

from dermaseg.config_io import load_config
from dermaseg.data.prepare import prepare_dataset, summary_lines
from dermaseg.data.splits import assign_folds
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.errors import UsageError
from dermaseg.train.datamodule import SegmentationDataModule
from dermaseg.train.runner import train
from helpers.badinputs import run_cli
from helpers.training import TINY as TRAIN_TINY

# test_train.py's TINY settings, one epoch
TINY = [*(item for item in TRAIN_TINY if "max_epochs" not in item), "train.max_epochs=1"]
SETTINGS = {"size": 48, "val": 0.2, "test": 0.2, "seed": 0, "workers": 1, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    synth_dataset(20, folder, seed=3, options=SynthOptions(min_side=48, max_side=72),
                  progress=False)
    return folder


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, dict]:
    """20 pairs: 4 test, 16 in the CV pool (12 train + 4 val), 5 folds."""
    out = tmp_path_factory.mktemp("prep") / "folds"
    return out, prepare_dataset(raw, out, folds=5, **SETTINGS)


def pool_ids(manifest: dict) -> set[str]:
    return {item["id"] for item in manifest["items"] if item["split"] != "test"}


def fold_ids(manifest: dict, fold: int) -> set[str]:
    return {item["id"] for item in manifest["items"] if item.get("fold") == fold}


def test_assign_folds_is_deterministic_and_balanced():
    ids = [f"id{i:02d}" for i in range(23)]
    folds = assign_folds(ids, 5, seed=1)
    assert folds == assign_folds(list(reversed(ids)), 5, seed=1)
    assert folds != assign_folds(ids, 5, seed=2)
    assert sorted(list(folds.values()).count(k) for k in range(5)) == [4, 4, 5, 5, 5]
    with pytest.raises(UsageError, match="--folds 1: cross-validation needs at least 2"):
        assign_folds(ids, 1, seed=1)
    with pytest.raises(UsageError, match="--folds 5: only 3 non-test items"):
        assign_folds(ids[:3], 5, seed=1)


def test_prepare_gives_every_non_test_item_a_fold(prepared, tmp_path):
    out, manifest = prepared
    assert manifest["folds"] == 5 and manifest["counts"] == {"train": 12, "val": 4, "test": 4}
    for item in manifest["items"]:
        assert ("fold" in item) == (item["split"] != "test")
    sizes = [len(fold_ids(manifest, k)) for k in range(5)]
    assert sorted(sizes) == [3, 3, 3, 3, 4] and set().union(*map(fold_ids, [manifest] * 5,
                                                                 range(5))) == pool_ids(manifest)
    assert json.loads((out / "manifest.json").read_text())["items"] == manifest["items"]
    assert any(line.startswith("folds (5, of train + val): 0 ") for line in
               summary_lines(manifest, out))


def test_prepare_rerun_keeps_the_folds_and_no_folds_changes_nothing(raw, prepared, tmp_path):
    out, manifest = prepared
    again = prepare_dataset(raw, out, folds=5, **SETTINGS)
    assert again["run"]["reused"] == 20 and again["items"] == manifest["items"]
    plain = prepare_dataset(raw, tmp_path / "plain", **SETTINGS)
    assert "folds" not in plain and not any("fold" in item for item in plain["items"])
    assert plain["items"] == [{k: v for k, v in item.items() if k != "fold"}
                              for item in manifest["items"]]
    other_seed = prepare_dataset(raw, tmp_path / "seed1", folds=5, **(SETTINGS | {"seed": 1}))
    assert [i.get("fold") for i in other_seed["items"]] != [i.get("fold") for i in plain["items"]]


def test_prepare_with_too_many_folds_leaves_no_folder_without_manifest(raw, tmp_path):
    """The fold count is checked after decoding: a folder this run made is removed."""
    with pytest.raises(UsageError, match="--folds 17: only 16 non-test items"):
        prepare_dataset(raw, tmp_path / "new", folds=17, **SETTINGS)
    assert not (tmp_path / "new").exists()


def test_datamodule_validates_on_the_fold_and_trains_on_the_rest(prepared):
    out, manifest = prepared
    for fold in range(5):
        module = SegmentationDataModule(load_config(None, [*TINY, f"data.fold={fold}"]), out)
        module.setup("fit")
        train_ids = {item["id"] for item in module.train_set.base.items}
        val_ids = {item["id"] for item in module.val_set.base.items}
        assert val_ids == fold_ids(manifest, fold)
        assert train_ids == pool_ids(manifest) - val_ids


class RecordIds(L.Callback):
    """The ids the run's datamodule trains and validates on."""

    def on_train_start(self, trainer, module) -> None:
        data = trainer.datamodule
        self.train = {item["id"] for item in data.train_set.base.items}
        self.val = {item["id"] for item in data.val_set.base.items}


@pytest.fixture(scope="module")
def fold_runs(prepared, tmp_path_factory) -> list[Path]:
    """Fold 0 trained through the CLI, fold 1 through `train` (one epoch each)."""
    out, manifest = prepared
    runs = tmp_path_factory.mktemp("cv")
    sets = [arg for setting in TINY for arg in ("--set", setting)]
    code, output = run_cli("train", "-c", "cpu_small", *sets, "-d", out,
                           "-o", runs / "fold0", "--fold", "0", "-q")
    assert code == 0, output
    assert json.loads(output.strip().splitlines()[-1])["fold"] == 0
    record = RecordIds()
    config = load_config("cpu_small", [*TINY, "data.fold=1"])
    summary = train(config, out, runs / "fold1", callbacks=[record], progress=False)
    assert summary["fold"] == 1 and summary["data"]["folds"] == 5
    assert record.val == fold_ids(manifest, 1)
    assert record.train == pool_ids(manifest) - fold_ids(manifest, 1)
    return [runs / "fold0", runs / "fold1"]


def test_the_fold_is_saved_with_the_run(fold_runs):
    from dermaseg.checkpoint import read_checkpoint

    run = fold_runs[0]
    assert load_config(run / "config.yaml").data.fold == 0
    assert json.loads((run / "summary.json").read_text())["fold"] == 0
    assert read_checkpoint(run / "best.ckpt")["dermaseg"]["config"]["data"]["fold"] == 0


def test_fold_errors_name_the_option_and_the_manifest(raw, prepared, fold_runs, tmp_path):
    out, _ = prepared
    plain = tmp_path / "plain"
    prepare_dataset(raw, plain, **SETTINGS)
    base = ["train", "-c", "cpu_small", "--set", "data.image_size=48"]
    cases = [
        (plain, "0", "--fold 0", f"{plain / 'manifest.json'} has no cross-validation folds"),
        (out, "5", "--fold 5: out of range", f"{out / 'manifest.json'} has folds 0..4"),
        (out, "-1", "--fold -1: must be 0 or more", "--folds K"),
    ]
    for data, fold, *words in cases:
        code, output = run_cli(*base, "-d", data, "-o", tmp_path / "run", "--fold", fold)
        assert code == 2 and all(w in output for w in words), output
        assert not (tmp_path / "run").exists()
    code, output = run_cli("train", "-d", out, "-o", fold_runs[0], "--resume", "--fold", "1")
    assert code == 2 and "--fold 1" in output and "data.fold=0" in output, output
    for folds, words in (("1", "needs at least 2"), ("21", "only 17 non-test items")):
        code, output = run_cli("data", "prepare", raw, "-o", tmp_path / "p", "--size", "48",
                               "--folds", folds)
        assert code == 2 and f"--folds {folds}: " in output and words in output, output


def test_cv_summary_prints_each_fold_and_the_mean(fold_runs, tmp_path):
    code, output = run_cli("cv-summary", *reversed(fold_runs), "-o", tmp_path / "cv.json")
    assert code == 0, output
    result = json.loads((tmp_path / "cv.json").read_text())
    assert [row["fold"] for row in result["runs"]] == [0, 1]
    assert result["folds"] == 5 and result["missing_folds"] == [2, 3, 4]
    dice = [json.loads((run / "summary.json").read_text())["best"]["val_dice"]
            for run in fold_runs]
    assert result["mean"]["val_dice"] == pytest.approx(sum(dice) / 2)
    assert result["std"]["val_dice"] == pytest.approx(abs(dice[0] - dice[1]) / 2 ** 0.5)
    assert "mean ± std over 2 of 5 folds: val Dice" in output
    assert f"{dice[0]:.4f}" in output and "missing folds: 2, 3, 4" in output


def test_cv_summary_refuses_runs_that_do_not_belong_together(fold_runs, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(fold_runs[1], tmp_path / name))

    other_config = copy("lr")
    text = (other_config / "config.yaml").read_text().replace("lr: 0.001", "lr: 0.002")
    (other_config / "config.yaml").write_text(text)
    other_data = copy("data")
    summary = json.loads((other_data / "summary.json").read_text())
    summary["data"]["fingerprint"] = "0" * 16
    (other_data / "summary.json").write_text(json.dumps(summary))
    cases = [(other_config, "different configs (optim.lr)"),
             (other_data, "prepared again between the runs"),
             (fold_runs[0], "both are fold 0")]
    for run, words in cases:
        code, output = run_cli("cv-summary", fold_runs[0], run)
        assert code == 2 and words in output, output


def test_evaluate_scores_a_fold_model_on_its_own_fold(prepared, fold_runs, tmp_path):
    """`--split fold0`: the fold model's validation images, at their original size."""
    out, manifest = prepared
    code, output = run_cli("evaluate", fold_runs[0] / "best.ckpt", "--data", out,
                           "--split", "fold0", "-o", tmp_path / "e", "-q")
    assert code == 0, output
    scored = set(json.loads((tmp_path / "e" / "metrics.json").read_text())["per_image"])
    assert scored == fold_ids(manifest, 0) and "not a test score" not in output
    code, output = run_cli("evaluate", fold_runs[0] / "best.ckpt", "--data", out,
                           "--split", "fold1", "-o", tmp_path / "e1", "-q")
    assert code == 0 and "split fold1 holds images the model trained on" in output, output
    assert "its own images are --split fold0" in output
    notes = json.loads((tmp_path / "e1" / "metrics.json").read_text())["notes"]
    assert any("not a test score" in note for note in notes)
    code, output = run_cli("evaluate", fold_runs[0] / "best.ckpt", "--data", out,
                           "--split", "fold9", "-o", tmp_path / "e9")
    assert code == 2 and "fold0 (" in output and "fold4 (" in output, output
