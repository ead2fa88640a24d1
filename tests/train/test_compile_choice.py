"""`dermaseg plan` and torch.compile: the rule on constructed measurements, the plan that does
not measure (CPU by default, --no-probe), the compiled step measured on the CPU (slow: a real
inductor compilation), and compilations that fail (eager, with the reason in the plan).

Tiny synthetic data prepared at 48 px (conftest's tiny_prepared); one torch thread.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from dermaseg.commands.plan import decision_lines
from dermaseg.config_io import load_config
from dermaseg.train.compile_choice import GAIN, decide_compile, plan_compile, run_steps
from dermaseg.train.plan import make_plan
from helpers.badinputs import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RECIPE = {  # test_plan.py's: the smallest model the plan tests use
    "model": {"arch": "deeplabv3plus", "backbone": "resnet18", "aspp_channels": 16,
              "decoder_channels": 16, "pretrained": None},
    "data": {"image_size": 48, "batch_size": 4, "num_workers": 0},
    "train": {"max_epochs": 3, "precision": "32"},
}
TRAIN_ITEMS = 16


@pytest.fixture
def tiny_base(tmp_path) -> Path:
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY_RECIPE))
    return base


def test_compiling_pays_over_a_long_run():
    choice = decide_compile(1.12, 0.41, 62, 2600)
    assert choice.compile
    assert choice.reason == ("compile: 62 s to compile, then 0.41 s/step instead of 1.12 s "
                             "over 2,600 steps saves 30 min")
    assert choice.eager_run_s == pytest.approx(2912)
    assert choice.compiled_run_s == pytest.approx(62 + 2600 * 0.41)
    assert choice.eager_steps == choice.compiled_steps == 2600


def test_compiling_does_not_pay_over_a_short_run():
    choice = decide_compile(0.45, 0.45 - 4 / 120, 62, 120)
    assert not choice.compile
    assert choice.reason == "eager: compiling costs 62 s and saves 4 s over 120 steps"
    assert choice.compiled_run_s > choice.eager_run_s


def test_a_compiled_step_no_faster_or_a_saving_under_the_margin_stays_eager():
    slower = decide_compile(0.10, 0.12, 5, 10_000)
    assert not slower.compile and "no faster than eager" in slower.reason
    # saves 10 s net of a 1,000 s run: 1 %, under the 5 % margin
    small = decide_compile(0.1, 0.098, 10, 10_000)
    assert not small.compile and "saves only 10 s (under 5 % of 17 min)" in small.reason
    big = decide_compile(0.1, 0.09, 10, 10_000)  # 90 s of 1,000: 9 %
    assert big.compile and GAIN < 0.09


def test_under_a_budget_compiling_pays_when_it_fits_more_steps():
    """20 min of steps: eager fits 1,071 of the 2,600; compiled, after 62 s, all of them."""
    choice = decide_compile(1.12, 0.41, 62, 2600, budget_s=20 * 60)
    assert choice.compile and (choice.eager_steps, choice.compiled_steps) == (1071, 2600)
    assert "fits 2,600 steps instead of 1,071 in the 20 min of training steps" in choice.reason
    assert choice.eager_run_s == 1200 and choice.compiled_run_s == pytest.approx(1128)


def test_under_a_short_budget_compiling_costs_steps():
    """90 s: eager fits 80 steps; compiling leaves 28 s, 68 steps."""
    choice = decide_compile(1.12, 0.41, 62, 2600, budget_s=90)
    assert not choice.compile and (choice.eager_steps, choice.compiled_steps) == (80, 68)
    assert choice.reason.startswith("eager: in the 1.5 min of training steps the budget leaves, "
                                    "compiling (62 s, then 0.41 s/step) fits 68 steps")
    cut = decide_compile(1.12, 0.41, 200, 2600, budget_s=150)  # the budget ends in compiling
    assert not cut.compile and cut.compiled_steps == 0


def test_a_budget_both_runs_fit_compares_the_time():
    """max_epochs ends both runs inside the budget: the shorter run wins."""
    choice = decide_compile(1.12, 0.41, 62, 2600, budget_s=3600)
    assert choice.compile and "saves 30 min" in choice.reason
    assert choice.eager_steps == choice.compiled_steps == 2600


def test_a_failed_compilation_is_eager_with_its_reason():
    choice = decide_compile(1.12, None, None, 2600,
                            failed="BackendCompilerFailed: Cannot find a working triton")
    assert not choice.compile
    assert choice.reason == "compile failed (BackendCompilerFailed: Cannot find a working " \
        "triton); eager"
    assert choice.as_dict()["compiled_run_s"] is None


def test_cpu_plans_do_not_measure_compilation(tiny_prepared, tiny_base):
    """Without --probe-compile a CPU plan keeps the recipe's train.compile and says why; with
    --no-probe nothing is measured whatever is asked."""
    plan = make_plan(tiny_prepared, device="cpu", base=tiny_base)
    decision = next(d for d in plan.decisions if d.name == "train.compile")
    assert decision.value is False and plan.compile is None
    assert "not measured on CPU (--probe-compile measures it)" in decision.reason
    assert plan.to_dict()["compile"] is None and not plan.config.train.compile
    unprobed = make_plan(tiny_prepared, device="cpu", base=tiny_base, probe=False,
                         probe_compile=True)
    decision = next(d for d in unprobed.decisions if d.name == "train.compile")
    assert "not measured (--no-probe)" in decision.reason and unprobed.compile is None
    assert any(re.match(r"train\.compile +false +the recipe's", line)
               for line in decision_lines(unprobed))  # as the YAML says it
    asked_not = plan_compile(load_config(tiny_base), "cuda", TRAIN_ITEMS, 100.0, None,
                             measure=False)  # --no-probe-compile on a GPU
    assert asked_not.record is None and asked_not.overrides() == {"train.compile": False}
    assert asked_not.decision.reason == "the recipe's, not measured (--no-probe-compile)"


def refusing_backend(graph_module, example_inputs):
    """A torch.compile backend that fails as a missing Triton does: at the first call."""
    raise RuntimeError("Cannot find a working triton installation (test backend)")


@pytest.mark.parametrize("where", ["first call", "torch.compile"])
def test_a_failed_compilation_plans_eager_with_a_note(tiny_prepared, tiny_base, monkeypatch,
                                                      where):
    """The compiled model fails at its first call (no Triton: the real dynamo path with a
    backend that refuses), or torch.compile itself refuses: the plan says eager and why."""
    original = torch.compile

    def failing_compile(model, **kwargs):
        if where == "torch.compile":
            raise RuntimeError("torch.compile is not supported here (test)")
        return original(model, mode=None, backend=refusing_backend)

    monkeypatch.setattr(torch, "compile", failing_compile)
    recipe = {**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "compile": True}}
    tiny_base.write_text(yaml.safe_dump(recipe))
    plan = make_plan(tiny_prepared, device="cpu", base=tiny_base, minutes=5, probe_compile=True)
    decision = next(d for d in plan.decisions if d.name == "train.compile")
    words = "Cannot find a working triton" if where == "first call" else "not supported here"
    assert decision.value is False and decision.reason.startswith("compile failed (")
    assert words in decision.reason and decision.reason.endswith("); eager")
    assert not plan.config.train.compile  # the recipe's true is turned off
    assert plan.compile is not None and plan.compile["failed"] and not plan.compile["compile"]
    assert plan.compile["compiled_step_s"] is None
    assert plan.estimate["epochs"] > 0  # the eager estimate, as without compiling


@pytest.mark.slow
def test_cpu_plan_measures_the_compiled_step(tiny_prepared, tmp_path, tiny_base):
    """--probe-compile on the CPU: a real compilation (inductor) of the tiny model; plan.json
    carries the measurements and the decision, which follows the rule from them, and the
    config and the time estimate follow the decision."""
    tiny_base.write_text(yaml.safe_dump(
        {**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "max_epochs": 100}}))
    out = tmp_path / "plan.yaml"
    code, output = run_cli("plan", "--data", tiny_prepared, "-o", out, "--device", "cpu",
                           "--base", tiny_base, "--minutes", "5", "--probe-compile")
    assert code == 0, output
    record = json.loads(out.with_suffix(".json").read_text())
    measured = record["compile"]
    assert measured["failed"] is None and measured["mode"] == "default"
    assert measured["compiled_step_s"] > 0 and measured["compile_s"] > 0
    assert measured["validation_compile_s"] >= 0
    config = load_config(out)
    batch = config.data.batch_size
    assert measured["batch"] == batch
    assert measured["eager_step_s"] == pytest.approx(batch / record["images_per_s"])
    assert measured["steps"] == run_steps(config, TRAIN_ITEMS) == 100 * (TRAIN_ITEMS // batch)
    choice = decide_compile(measured["eager_step_s"], measured["compiled_step_s"],
                            measured["compile_s"], measured["steps"], measured["budget_s"])
    assert measured["compile"] is choice.compile is config.train.compile
    assert measured["reason"] == choice.reason
    assert "probing torch.compile (mode default) at batch" in output
    assert "ms/step against" in output and "s compiling" in output
    comments = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert any("train.compile" in line and choice.reason in line for line in comments)
    speed = batch / measured["compiled_step_s"] if choice.compile else record["images_per_s"]
    assert record["estimate"]["minutes_per_epoch"] == pytest.approx(
        TRAIN_ITEMS / speed / 60 / 0.85, abs=0.0006)  # rounded to 3 decimals
