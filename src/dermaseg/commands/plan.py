"""`dermaseg plan --data PREP`: choose recipe, image size, batch size and time budget for this
dataset on this machine; write them as a config for `dermaseg train --config`."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import Path

import typer

from dermaseg.errors import UsageError


def _check_outputs(out: Path, force: bool) -> Path:
    """plan.json's path beside `out`.

    Raises:
        UsageError: `out` or plan.json is a folder, or one of them exists and `force` is off.
    """
    if out.is_dir():
        raise UsageError(f"-o {out}: is a folder; give the plan's file name, e.g. {out}/plan.yaml")
    sidecar = out.with_suffix(".json")
    if sidecar == out:
        raise UsageError(f"-o {out}: give a .yaml file name (plan.json is written beside it)")
    if sidecar.is_dir():
        raise UsageError(f"{sidecar}: is a folder, where the plan writes its measurements; "
                         "choose another -o")
    existing = [str(p) for p in (out, sidecar) if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise UsageError(f"{', '.join(existing)}: already {verb}; add --force to replace, or "
                         "choose another -o")
    return sidecar


def _spread(values: dict | None, unit: str = "") -> str:
    if values is None:
        return "unknown"
    rest = ", ".join(f"{k} {v:g}{unit}" for k, v in values.items() if k != "median")
    return f"median {values['median']:g}{unit} ({rest})"


def fingerprint_lines(plan) -> list[str]:
    """The dataset and machine fingerprints, a few lines of text."""
    d, m = plan.dataset, plan.machine
    counts = ", ".join(f"{n} {s}" for s, n in d["counts"].items())
    folds = f"; {d['folds']} folds: {d['fold_counts']}" if d["folds"] else ""
    if m["device"] == "cuda":
        device = f"CUDA {m['name']}, {m['gpu_memory_gib']} GiB ({m['gpus']} GPU(s))"
    else:
        device = m["name"]
    ram = "unknown" if m["ram_available_gib"] is None else \
        f"{m['ram_available_gib']} GiB available of {m['ram_total_gib']}"
    return [
        f"data:    {d['path']}: {counts}{folds}; prepared at {d['prepared_size']} px",
        f"         original height {_spread(d['orig_height'], ' px')}",
        f"         original width  {_spread(d['orig_width'], ' px')}",
        f"         lesion fraction {_spread(d['lesion_fraction'])}",
        f"machine: {device}; {m['cpu_cores']} CPU cores (load {m['load_average']}); RAM {ram}",
    ]


def _value(value) -> str:
    """A decision's value as the YAML writes it: null, true, false; else as it prints."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def decision_lines(plan) -> list[str]:
    """One line per decision: name, value, reason (a table)."""
    width = max(len(d.name) for d in plan.decisions)
    rows = [(d.name, _value(d.value), d.reason) for d in plan.decisions]
    values = max(len(v) for _, v, _ in rows)
    lines = [f"{name:<{width}}  {value:<{values}}  {reason}" for name, value, reason in rows]
    return lines + [f"warning: {text}" for text in plan.warnings]


def train_command(plan, out: Path, prep: Path) -> str:
    """The `dermaseg train` command that runs this plan (CPU planned on a CUDA machine: with
    the GPUs hidden, as training would otherwise use them)."""
    import torch

    from dermaseg.invocation import dermaseg_command

    run = Path("runs") / out.stem
    command = (f"{dermaseg_command()} train --config {shlex.quote(str(out))} "
               f"--data {shlex.quote(str(prep))} -o {shlex.quote(str(run))}")
    if plan.machine["device"] == "cpu" and torch.cuda.is_available():
        command = "CUDA_VISIBLE_DEVICES= " + command
    folds = plan.dataset.get("folds")
    if folds:  # cross-validation data: one run per fold
        command += f" --fold K   # K = 0..{folds - 1}, one run each (-o runs/..-foldK)"
    return command


def plan_yaml(plan, command: str) -> str:
    """The config YAML preceded by `#` lines: fingerprints, decisions and how to train."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"dermaseg plan, {stamp}", *fingerprint_lines(plan), "decisions:",
              *(f"  {line}" for line in decision_lines(plan)), "train with:", f"  {command}"]
    return "".join(f"# {line}".rstrip() + "\n" for line in header) + plan.config.to_yaml()


def prepared_folder(data: Path | None, prep: Path | None) -> Path:
    """The prepared folder from --data, or from the older positional form (with a note).

    Raises:
        UsageError: neither given, or both.
    """
    if data is not None and prep is not None:
        raise UsageError(f"give the prepared folder once: --data {data} (not also {prep})")
    if data is None and prep is None:
        raise UsageError("give the prepared folder: dermaseg plan --data PREP")
    if prep is not None:
        typer.echo(f"note: `dermaseg plan {prep}` still works but is deprecated; write "
                   f"`dermaseg plan --data {prep}`, as train and evaluate take it", err=True)
    return data or prep  # type: ignore[return-value]


def plan(
    prep: Path | None = typer.Argument(
        None, help="Deprecated: the prepared folder as an argument; use --data.",
        show_default=False),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Folder written by `dermaseg data prepare`."),
    out: Path = typer.Option(Path("plan.yaml"), "--out", "-o",
                             help="Config to write; NAME.json beside it gets the measurements."),
    minutes: float | None = typer.Option(
        None, "--minutes", help="Training time budget in minutes (sets train.max_minutes)."),
    device: str = typer.Option("auto", "--device",
                               help="auto (what training would use) | cuda | mps | cpu."),
    base: Path | None = typer.Option(
        None, "--base", help="Start from this recipe: a YAML file or a shipped recipe's name "
        "(default: the shipped GPU or CPU recipe; `dermaseg recipes list`)."),
    probe: bool = typer.Option(True, "--probe/--no-probe",
                               help="Measure training steps to choose the batch size."),
    probe_compile: bool | None = typer.Option(
        None, "--probe-compile/--no-probe-compile", show_default=False,
        help="Measure the torch.compile'd step too and turn train.compile on when it pays "
        "over the run (default: on a CUDA GPU only; a minute or more)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing -o / plan.json."),
) -> None:
    """Plan a training run: fingerprint the prepared data and this machine, choose recipe,
    image size, batch size (measured with real training steps), torch.compile (on a GPU,
    measured: on when it pays over the run), loader workers, loss weighting and time budget,
    each with its reason.

    Writes the resolved config (-o, default plan.yaml; the reasons as # comments) and the
    same name with .json beside it (fingerprints, measurements, decisions), then prints the
    `dermaseg train` command that uses it.
    """
    from dermaseg.fileio import write_bytes_atomic, write_json_atomic
    from dermaseg.train.plan import make_plan

    prep = prepared_folder(data, prep)
    sidecar = _check_outputs(out, force)
    result = make_plan(prep, device=device, base=base, minutes=minutes, probe=probe,
                       probe_compile=probe_compile, report=lambda line: typer.echo(f"  {line}"))
    command = train_command(result, out, prep)
    typer.echo("\n".join([*fingerprint_lines(result), "", *decision_lines(result), ""]))
    write_bytes_atomic(out, plan_yaml(result, command).encode())
    write_json_atomic(sidecar, {**result.to_dict(), "train_command": command})
    typer.echo(f"wrote {out} and {sidecar}")
    typer.echo(f"train with:\n  {command}")
