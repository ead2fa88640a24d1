"""Whether `dermaseg plan` turns `train.compile` on: the measured eager and compiled training
steps and the compilation's cost, carried over the whole planned run.

`decide_compile` is the rule (pure arithmetic on the measurements); `plan_compile` measures
(`dermaseg.train.probe.probe_compile`: on a CUDA GPU, elsewhere only when asked) and returns the
plan's decision with the measurements for plan.json.

The run: train.max_epochs x (training items // batch) optimiser steps. Without a time budget,
the run's step time each way: eager N x eager step; compiled compile time + N x compiled step.
Under a budget (its 85 % for training steps, as the epoch estimate), the steps each way fits
in it, at most N. Compilation is turned on when it is at least 5 % better: less time for the
same steps, or more steps in the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from dermaseg.config import Config
from dermaseg.train.plan import VALIDATION_SHARE, Decision

GAIN = 0.05  # compiling must save at least 5 % of the run's step time (or fit 5 % more steps)
GPU_MODE = "reduce-overhead"  # CUDA graphs: 2.7x fp32 eager on an H100 (bench/results/gpu.md)
OTHER_MODE = "default"  # CUDA graphs are for CUDA alone


@dataclass(frozen=True)
class CompileChoice:
    """Compile or not, the run's estimated step seconds and steps each way, and why."""

    compile: bool
    reason: str
    eager_run_s: float | None = None
    compiled_run_s: float | None = None
    eager_steps: int | None = None
    compiled_steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: round(value, 3) if isinstance(value, float) else value
                for key, value in asdict(self).items()}


def duration(seconds: float) -> str:
    """'45 s', '3.5 min', '30 min'."""
    if abs(seconds) < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if abs(minutes) < 10 else f"{minutes:.0f} min"


def per_step(seconds: float) -> str:
    """'0.41 s' or '13.2 ms'."""
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def decide_compile(eager_step_s: float, compiled_step_s: float | None,
                   compile_s: float | None, steps: int, budget_s: float | None = None,
                   failed: str | None = None) -> CompileChoice:
    """Whether compiling pays over a run of `steps` optimiser steps (see the module doc).

    Args:
        eager_step_s: seconds per eager training step.
        compiled_step_s: seconds per compiled step, once compiled (None: compiling failed).
        compile_s: seconds compiling adds to the run (the first compiled calls' excess).
        steps: the run's optimiser steps (max_epochs x steps per epoch).
        budget_s: seconds of training steps a time budget leaves (None: no budget).
        failed: why compiling failed (one line), when it did.
    """
    if failed is not None or compiled_step_s is None or compile_s is None:
        return CompileChoice(False, f"compile failed ({failed or 'not measured'}); eager")
    eager_s, compiled_s = steps * eager_step_s, compile_s + steps * compiled_step_s
    if budget_s is not None and max(eager_s, compiled_s) > budget_s:
        fit_eager = min(steps, int(budget_s / eager_step_s))
        fit_compiled = min(steps, max(0, int((budget_s - compile_s) / compiled_step_s)))
        pays = fit_compiled > (1 + GAIN) * fit_eager
        reason = _budget_reason(pays, eager_step_s, compiled_step_s, compile_s, budget_s,
                                (fit_eager, fit_compiled))
        return CompileChoice(pays, reason, min(eager_s, budget_s), min(compiled_s, budget_s),
                             fit_eager, fit_compiled)
    pays = eager_s - compiled_s > GAIN * eager_s
    reason = _run_reason(pays, eager_step_s, compiled_step_s, compile_s, steps)
    return CompileChoice(pays, reason, eager_s, compiled_s, steps, steps)


def _pace(eager_step_s: float, compiled_step_s: float, compile_s: float) -> str:
    return (f"{duration(compile_s)} to compile, then {per_step(compiled_step_s)}/step instead "
            f"of {per_step(eager_step_s)}")


def _budget_reason(pays: bool, eager_step_s: float, compiled_step_s: float, compile_s: float,
                   budget_s: float, fits: tuple[int, int]) -> str:
    """decide_compile's reason under a budget that the run, one way or both, does not fit."""
    within = f"in the {duration(budget_s)} of training steps the budget leaves"
    if pays:
        return (f"compile: {_pace(eager_step_s, compiled_step_s, compile_s)} fits "
                f"{fits[1]:,} steps instead of {fits[0]:,} {within}")
    return (f"eager: {within}, compiling ({duration(compile_s)}, then "
            f"{per_step(compiled_step_s)}/step) fits {fits[1]:,} steps, eager "
            f"({per_step(eager_step_s)}/step) {fits[0]:,}")


def _run_reason(pays: bool, eager_step_s: float, compiled_step_s: float, compile_s: float,
                steps: int) -> str:
    """decide_compile's reason for a whole run of `steps` (no budget, or one both fit in)."""
    eager_s, compiled_s = steps * eager_step_s, compile_s + steps * compiled_step_s
    pace = _pace(eager_step_s, compiled_step_s, compile_s)
    if pays:
        return f"compile: {pace} over {steps:,} steps saves {duration(eager_s - compiled_s)}"
    if compiled_step_s >= eager_step_s:
        return (f"eager: the compiled step ({per_step(compiled_step_s)}) is no faster than "
                f"eager ({per_step(eager_step_s)})")
    if eager_s > compiled_s:
        return (f"eager: {pace} over {steps:,} steps saves only "
                f"{duration(eager_s - compiled_s)} (under {GAIN * 100:g} % of "
                f"{duration(eager_s)})")
    return (f"eager: compiling costs {duration(compile_s)} and saves "
            f"{duration(steps * (eager_step_s - compiled_step_s))} over {steps:,} steps")


def compile_mode(config: Config, device: str) -> str:
    """The mode to measure: the recipe's when it compiles, else reduce-overhead on CUDA (the
    fastest in the GPU benchmark) and the default mode elsewhere."""
    if config.train.compile:
        return config.train.compile_mode
    return GPU_MODE if device == "cuda" else OTHER_MODE


def run_steps(config: Config, items: int) -> int:
    """The run's optimiser steps: max_epochs x steps per epoch (the last partial batch is
    dropped), at least one per epoch."""
    return config.train.max_epochs * max(1, items // config.data.batch_size)


@dataclass
class CompilePlan:
    """`plan_compile`'s answer: the decision, plan.json's record (None: not measured), the
    images/s the time estimate takes (the chosen path's) and the minutes spent compiling."""

    decision: Decision
    record: dict[str, Any] | None
    images_per_s: float | None
    compile_minutes: float = 0.0

    def overrides(self) -> dict[str, Any]:
        """The config's train.compile (and, when the plan compiles, train.compile_mode)."""
        if self.decision.value and self.record is not None:
            return {"train.compile": True, "train.compile_mode": self.record["mode"]}
        return {"train.compile": self.decision.value}


def plan_compile(config: Config, device: str, items: int, images_per_s: float | None,
                 minutes: float | None, measure: bool | None,
                 report: Callable[[str], None] = lambda line: None) -> CompilePlan:
    """Measure the compiled step at the planned batch and decide `train.compile` (see the
    module doc). `images_per_s`: the eager probe's at that batch (None: not probed, nothing is
    measured); `measure`: None measures on CUDA only. A compilation that fails is a decision
    for eager with the reason, never an error."""
    from dermaseg.train.probe import describe_compile, probe_compile

    current = config.train.compile
    if images_per_s is None:
        return CompilePlan(Decision("train.compile", current,
                                    "the recipe's, not measured (--no-probe)"), None, None)
    if measure is False:
        return CompilePlan(Decision("train.compile", current, "the recipe's, not measured "
                                    "(--no-probe-compile)"), None, images_per_s)
    if measure is None and device != "cuda":
        return CompilePlan(Decision("train.compile", current, f"the recipe's: not measured on "
                                    f"{device.upper()} (--probe-compile measures it)"), None,
                           images_per_s)
    import torch

    mode, batch = compile_mode(config, device), config.data.batch_size
    report(f"probing torch.compile (mode {mode}) at batch {batch}:")
    probe = probe_compile(config, torch.device(device), batch, mode)
    report(describe_compile(probe, batch / images_per_s))
    budget = minutes if minutes is not None else config.train.max_minutes
    budget_s = None if budget is None else budget * 60 * (1 - VALIDATION_SHARE)
    steps = run_steps(config, items)
    choice = decide_compile(batch / images_per_s, probe.compiled_step_s, probe.compile_s, steps,
                            budget_s, probe.failed)
    record = {**probe._asdict(), "eager_step_s": batch / images_per_s, "steps": steps,
              "budget_s": budget_s, **choice.as_dict()}
    if not choice.compile or probe.compiled_step_s is None or probe.compile_s is None:
        return CompilePlan(Decision("train.compile", False, choice.reason), record, images_per_s)
    return CompilePlan(Decision("train.compile", True, f"{choice.reason} (compile_mode {mode})"),
                       record, batch / probe.compiled_step_s, probe.compile_s / 60)
