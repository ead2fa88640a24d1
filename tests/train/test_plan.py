"""`dermaseg plan`: fingerprints, the batch-size probe (real training steps on the CPU) and its
selection rule, the written config, and a training run that uses it.

Tiny synthetic data prepared at 48 px; one torch thread (see test_train.py).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from dermaseg.config_io import load_config
from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.train.batch_rule import scale_for_batch
from dermaseg.train.plan import VALIDATION_SHARE, make_plan, plan_workers
from dermaseg.train.probe import CPU_BATCHES, Probe, choose_batch, keep_probing
from helpers.badinputs import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RECIPE = {
    "model": {"arch": "deeplabv3plus", "backbone": "resnet18", "aspp_channels": 16,
              "decoder_channels": 16, "pretrained": None},
    "data": {"image_size": 48, "batch_size": 4, "num_workers": 0},
    "train": {"max_epochs": 3, "precision": "32"},
}
TRAIN_ITEMS = 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """16 train + 4 val synthetic pairs prepared at 48 px."""
    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("plan") / "prep"
    synth_dataset(20, raw, seed=5, options=SynthOptions(min_side=48, max_side=72),
                  progress=False)
    prepare_dataset(raw, out, size=48, val=0.2, test=0.0, seed=0, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def no_probe_plan(prepared, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("noprobe") / "plan.yaml"
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe", "--device", "cpu")
    assert code == 0, output
    return out, output


@pytest.fixture(scope="module")
def probed_plan(prepared, tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("probed")
    base = folder / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY_RECIPE))
    out = folder / "plan.yaml"
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--device", "cpu", "--base", base,
                           "--minutes", "5")
    assert code == 0, output
    return out, output


def test_no_probe_plan_is_the_cpu_recipe_capped_at_the_prepared_size(no_probe_plan):
    out, output = no_probe_plan
    recipe = load_config("cpu_small")
    planned = load_config(out)  # the whole file: comments + YAML
    assert planned.data.image_size == 48 and recipe.data.image_size == 192
    # all else is the recipe's (lesions are large: no pos_weight)
    assert planned == recipe.updated({"data.image_size": 48})
    comments = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert any("prepare at 192 px for this recipe" in line for line in comments)
    assert any("not measured (--no-probe)" in line for line in comments)
    assert any("dermaseg train --config" in line for line in comments)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["probes"] == [] and record["images_per_s"] is None
    assert record["dataset"]["counts"] == {"train": TRAIN_ITEMS, "val": 4, "test": 0}
    assert record["dataset"]["prepared_size"] == 48
    assert record["machine"]["device"] == "cpu" and record["machine"]["cpu_cores"] >= 1
    assert f"dermaseg train --config {out} --data" in output


def test_image_sides_are_whole_pixels(no_probe_plan):
    """Percentiles of the original sides fall between images (p90 of 48..72 px sides):
    shown and recorded as whole pixels, never "63.2 px"."""
    out, output = no_probe_plan
    dataset = json.loads(out.with_suffix(".json").read_text())["dataset"]
    for side in ("orig_height", "orig_width"):
        assert set(dataset[side]) == {"median", "p10", "p90"}
        assert all(type(value) is int for value in dataset[side].values()), dataset[side]
    lines = [line for line in output.splitlines() if "original " in line]
    assert len(lines) == 2 and all(re.search(r"\d\.\d+ px", line) is None for line in lines)
    assert re.search(r"original height median \d+ px \(p10 \d+ px, p90 \d+ px\)", lines[0])


def test_probe_measures_each_batch_and_follows_the_rule(probed_plan):
    out, output = probed_plan
    record = json.loads(out.with_suffix(".json").read_text())
    probes = [Probe(**p) for p in record["probes"]]
    batches = [p.batch for p in probes]
    assert batches == list(CPU_BATCHES[:len(batches)]) and len(batches) >= 2
    assert all(p.ok and p.images_per_s > 0 and p.peak_fraction is None for p in probes)
    for probe in probes:
        assert f"batch {probe.batch:>3}: {probe.images_per_s:.1f} images/s" in output
    chosen = load_config(out).data.batch_size
    assert chosen in batches and chosen == choose_batch(probes, gpu=False, items=TRAIN_ITEMS)[0]
    assert record["images_per_s"] == next(p.images_per_s for p in probes if p.batch == chosen)
    recipe = load_config(out.parent / "tiny.yaml")
    epochs = min(recipe.train.max_epochs, round(record["estimate"]["epochs"]))
    rule = scale_for_batch(recipe.optim, recipe.data.batch_size, chosen, epochs)
    planned = load_config(out).optim  # the recipe's rate and warm-up, for the batch
    assert (planned.lr, planned.warmup_epochs) == (rule.lr, rule.warmup_epochs)
    assert {"name": "optim.lr", "value": rule.lr, "reason": rule.reason} in record["decisions"]
    # the probe stopped where the rule says: the last batch gained <= 5 %, or the list ended
    assert not keep_probing(probes, gpu=False) or len(batches) == len(CPU_BATCHES)


def test_minutes_sets_the_budget_and_estimates_epochs(probed_plan):
    out, output = probed_plan
    record = json.loads(out.with_suffix(".json").read_text())
    config = load_config(out)
    assert config.train.max_minutes == 5
    assert config.train.expected_epoch_seconds == pytest.approx(
        record["estimate"]["minutes_per_epoch"] * 60, abs=0.01)  # training's yardstick
    expected = 5 * 60 * (1 - VALIDATION_SHARE) * record["images_per_s"] / TRAIN_ITEMS
    assert record["estimate"]["epochs"] == pytest.approx(expected, rel=0.01, abs=0.1)
    assert f"~{expected:.0f} epochs of {TRAIN_ITEMS} images" in output
    assert config.model.backbone == "resnet18" and config.model.aspp_channels == 16


def gpu(*rows) -> list[Probe]:
    return [Probe(*row) for row in rows]


def test_gpu_rule_out_of_memory_at_32():
    probes = gpu((2, 100, 0.05, True), (4, 190, 0.1, True), (8, 350, 0.2, True),
                 (16, 400, 0.4, True), (32, 0.0, None, False))
    assert choose_batch(probes, gpu=True)[0] == 16
    assert not keep_probing(probes, gpu=True)


def test_gpu_rule_memory_above_85_percent():
    probes = gpu((4, 190, 0.3, True), (8, 350, 0.6, True), (16, 400, 0.9, True))
    batch, reason = choose_batch(probes, gpu=True)
    assert batch == 8 and "85 %" in reason  # 16 is fastest but uses 90 % of the memory
    assert not keep_probing(probes, gpu=True)


def test_gpu_rule_flat_throughput_takes_the_largest_near_the_best():
    probes = gpu((2, 100, 0.05, True), (4, 190, 0.1, True), (8, 200, 0.2, True),
                 (16, 203, 0.4, True))
    assert choose_batch(probes, gpu=True)[0] == 16  # 8 and 16 within 5 % of 203: largest
    assert not keep_probing(probes, gpu=True)  # 203 is not > 5 % above 200
    assert keep_probing(probes[:2], gpu=True)


def test_gpu_rule_caps_the_batch_at_5_percent_of_the_training_items():
    """The H100 probe of the real set (136 training items): 64 was fastest, but would give
    ~2 updates per epoch; nnU-Net's cap (5 % of the items: 6) keeps 2 and 4."""
    probes = gpu((2, 53.5, 0.02, True), (4, 91.2, 0.03, True), (8, 168.9, 0.04, True),
                 (16, 345.9, 0.08, True), (32, 370.1, 0.14, True), (64, 390.7, 0.28, True))
    assert choose_batch(probes, gpu=True)[0] == 64
    batch, reason = choose_batch(probes, gpu=True, items=136)
    assert batch == 4 and "5 % of the 136 training items" in reason
    assert choose_batch(probes, gpu=True, items=2594)[0] == 64  # ISIC 2018: no cap
    assert choose_batch(probes, gpu=True, items=20)[0] == 2  # never below the smallest
    assert choose_batch(probes, gpu=False, items=136)[0] == 32  # CPU: 25 %, 4 steps an epoch


def test_gpu_workers_say_when_the_split_stays_on_the_gpu():
    """The H100 plan of the real set said 8 workers keep the GPU fed, although data.gather_on
    auto kept its 136 items (0.13 GiB at 512 px) on the GPU and the loader had no workers."""
    config = load_config("deeplabv3plus_resnet50_isic", ["data.image_size=512"])
    on_gpu = plan_workers(config, "cuda", 16, items=136, gpu_memory_gib=79.2)
    assert on_gpu.value == 8 and "unused while data.gather_on: auto keeps the 136" in on_gpu.reason
    assert "0.13 GiB" in on_gpu.reason
    too_big = plan_workers(config, "cuda", 16, items=136, gpu_memory_gib=0.4)  # > 1/4 of it
    assert too_big.value == 8 and "unused" not in too_big.reason
    loader = config.updated({"data.gather_on": "loader"})
    assert "unused" not in plan_workers(loader, "cuda", 16, 136, 79.2).reason
    augment_in_loader = config.updated({"data.gather_on": "auto", "data.augment_on": "loader"})
    assert "unused" not in plan_workers(augment_in_loader, "cuda", 16, 136, 79.2).reason
    three = config.updated({"data.num_workers": 3})
    assert plan_workers(three, "cpu", 2, 136).value == 3  # CPU: the recipe's


def test_cpu_rule_takes_the_smallest_near_the_best():
    probes = gpu((2, 9.3, None, True), (4, 11.1, None, True), (8, 11.8, None, True),
                 (16, 11.6, None, True))
    assert choose_batch(probes, gpu=False)[0] == 8
    batch, reason = choose_batch(probes, gpu=False, items=26)  # 16 would be 1 step an epoch
    assert batch == 4 and "at most 25 % of the 26 training items (batch 8, 16 would" in reason


def test_smallest_batch_out_of_memory_is_refused():
    from dermaseg.errors import DermasegError

    with pytest.raises(DermasegError, match="batch 2 does not fit"):
        choose_batch(gpu((2, 0.0, None, False)), gpu=True)


def test_small_lesions_set_pos_weight(prepared, tmp_path):
    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for item in manifest["items"]:
        item["lesion_fraction"] = 0.095
    (copy / "manifest.json").write_text(json.dumps(manifest))
    plan = make_plan(copy, device="cpu", probe=False)
    assert plan.config.loss.pos_weight == 9.5  # (1 - 0.095) / 0.095 = 9.53
    decision = next(d for d in plan.decisions if d.name == "loss.pos_weight")
    assert "0.095 < 0.1" in decision.reason
    assert make_plan(prepared, device="cpu", probe=False).config.loss.pos_weight is None


def test_refuses_a_folder_that_is_not_prepared(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jpg").write_bytes(b"")
    for folder in (raw, tmp_path / "missing"):
        code, output = run_cli("plan", "--data", folder, "-o", tmp_path / "p.yaml", "--no-probe")
        assert code == 2, output
        assert str(folder) in output and "dermaseg data prepare" in output
    assert not (tmp_path / "p.yaml").exists()


def test_the_folder_as_an_argument_still_works_with_a_note(prepared, tmp_path):
    """`plan PREP` (0.1) and `plan --data PREP` (as train and evaluate) give the same plan."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    code, output = run_cli("plan", prepared, "-o", old, "--no-probe", "--device", "cpu")
    assert code == 0 and "deprecated" in output and f"--data {prepared}" in output
    code, output = run_cli("plan", "-d", prepared, "-o", new, "--no-probe", "--device", "cpu")
    assert code == 0 and "deprecated" not in output
    assert load_config(old) == load_config(new)
    code, output = run_cli("plan", prepared, "--data", prepared, "-o", tmp_path / "x.yaml")
    assert code == 2 and "once" in output
    code, output = run_cli("plan", "-o", tmp_path / "x.yaml")
    assert code == 2 and "--data PREP" in output


def test_refuses_to_overwrite_without_force(prepared, tmp_path):
    out = tmp_path / "plan.yaml"
    out.write_text("mine\n")
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe", "--device", "cpu")
    assert code == 2 and str(out) in output and "--force" in output
    assert out.read_text() == "mine\n" and not out.with_suffix(".json").exists()
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe", "--device", "cpu",
                           "--force")
    assert code == 0, output
    assert load_config(out).data.image_size == 48


def test_bad_base_recipes_are_named_as_base(prepared, tmp_path):
    """A missing --base is called --base (not train's --config); a recipe that is not UTF-8
    text is a one-line error, not a traceback."""
    out = tmp_path / "plan.yaml"
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe", "--device", "cpu",
                           "--base", tmp_path / "nope.yaml")
    assert code == 2 and "--base" in output and "--config" not in output, output
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model: {}\n")
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe", "--device", "cpu",
                           "--base", binary)
    assert code == 1 and "not a YAML text file" in output and "Traceback" not in output, output
    assert not out.exists() and not out.with_suffix(".json").exists()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({**TINY_RECIPE, "model": {"arch": "unet"}}))
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--device", "cpu",
                           "--base", unknown)
    assert code == 1 and "model.arch" in output and "probing" not in output, output


def test_sidecar_folder_is_refused_before_anything_is_written(prepared, tmp_path):
    """plan.json beside -o is a folder: refused up front, even with --force, so no plan.yaml
    is left without its plan.json."""
    out = tmp_path / "plan.yaml"
    (tmp_path / "plan.json").mkdir()
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe", "--device", "cpu",
                           "--force")
    assert code == 2 and "plan.json" in output and "folder" in output, output
    assert not out.exists()


@pytest.mark.parametrize("minutes", ["0", "-3"])
def test_refuses_minutes_not_above_zero(prepared, tmp_path, minutes):
    out = tmp_path / "plan.yaml"
    code, output = run_cli("plan", "--data", prepared, "-o", out, "--no-probe",
                           "--minutes", minutes)
    assert code == 2 and "--minutes" in output
    assert not out.exists()


def test_train_runs_with_the_planned_config(no_probe_plan, prepared, tmp_path):
    out, _ = no_probe_plan
    run = tmp_path / "run"
    code, output = run_cli("train", "--config", out, "--data", prepared, "-o", run,
                           "--set", "train.max_epochs=1", "--quiet")
    assert code == 0, output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert load_config(run / "config.yaml").data.image_size == 48


def test_step_runner_bf16_edge_head_and_out_of_memory(monkeypatch):
    """The GPU recipe's parts on the CPU: edge head + boundary loss + scSE under bf16 autocast;
    an out-of-memory error during a step is a failed probe, not a crash."""
    import torch

    from dermaseg.config_io import config_from_dict
    from dermaseg.train.probe import StepRunner

    recipe = {**TINY_RECIPE, "model": {**TINY_RECIPE["model"], "edge_head": True,
                                       "attention": "scse", "pretrained": "imagenet"},
              "loss": {"boundary": 0.5}, "train": {"precision": "bf16"}}
    runner = StepRunner(config_from_dict(recipe), torch.device("cpu"))  # no download
    assert runner.dtype == torch.bfloat16
    probe = runner.measure(2, warmup=0, timed=1)
    assert probe.ok and probe.images_per_s > 0 and probe.peak_fraction is None

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "step", out_of_memory)
    assert runner.measure(4, warmup=1, timed=2) == Probe(4, 0.0, None, False)


def test_busy_cpu_is_warned_about():
    from dermaseg.train.machine import busy_warning

    busy = {"device": "cpu", "cpu_cores": 2, "load_average": 3.6}
    assert "load 3.6 on 2 cores" in busy_warning(busy, probed=True)[0]
    assert busy_warning(busy, probed=False) == []
    assert busy_warning({**busy, "load_average": 0.4}, probed=True) == []
    assert busy_warning({**busy, "device": "cuda"}, probed=True) == []


def test_cross_validation_data_gets_the_fold_option(prepared, tmp_path):
    folded = tmp_path / "prep"
    shutil.copytree(prepared, folded)
    manifest = json.loads((folded / "manifest.json").read_text())
    pool = [item for item in manifest["items"] if item["split"] != "test"]
    for index, item in enumerate(pool):
        item["fold"] = index % 3
    manifest["folds"] = 3
    (folded / "manifest.json").write_text(json.dumps(manifest))
    code, output = run_cli("plan", "--data", folded, "-o", tmp_path / "plan.yaml", "--no-probe",
                           "--device", "cpu")
    assert code == 0, output
    assert "--fold K" in output and "K = 0..2" in output
    assert "--fold K" in (tmp_path / "plan.yaml").read_text()


@pytest.mark.parametrize(("device", "words"), [
    ("cuda:1", "CUDA_VISIBLE_DEVICES=1 dermaseg plan ... --device cuda"),
    ("tpu", "--device tpu: must be one of auto, cpu, cuda, mps")])
def test_unknown_devices_are_refused_with_what_to_give(prepared, tmp_path, device, words):
    code, output = run_cli("plan", "--data", prepared, "-o", tmp_path / "plan.yaml",
                           "--device", device)
    assert code == 2 and words in output, output
    assert not (tmp_path / "plan.yaml").exists()
