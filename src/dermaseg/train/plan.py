"""`dermaseg plan`: fingerprint a prepared dataset and this machine, and choose the training
settings from them (recipe, image size, batch size and its learning rate, compilation, workers,
loss weighting, time budget).

`make_plan` returns a Plan: the resolved Config (loadable by `dermaseg train --config`), the two
fingerprints (the machine's: `dermaseg.train.machine`), the batch-size probe
(`dermaseg.train.probe`), the compiled step's measurement (`dermaseg.train.compile_choice`),
the learning rate for the batch (`dermaseg.train.batch_rule`) and one Decision per setting,
each with a one-line reason.
`plan_yaml` renders it as the config YAML preceded by `#` lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermaseg.config import Config
from dermaseg.config_io import load_config
from dermaseg.data.splits import MANIFEST, SPLITS, fold_counts, fold_members
from dermaseg.errors import DermasegError, UsageError
from dermaseg.train.machine import busy_warning, machine_fingerprint, resolve_device

GPU_RECIPE = "deeplabv3plus_resnet50_isic"  # shipped recipes (dermaseg.recipes)
CPU_RECIPE = "cpu_small"
VALIDATION_SHARE = 0.15  # of the time budget kept for validation, loading, checkpoints
FEW_EPOCHS = 10
SMALL_LESION = 0.1  # median lesion fraction below which lesion pixels get a BCE pos_weight
PREPARE_HINT = "make one with `dermaseg data prepare IMAGES/ -o PREPARED/`"


@dataclass
class Decision:
    """One planned setting: what it is (`name`, e.g. "batch size"), the value, and why."""

    name: str
    value: Any
    reason: str


@dataclass
class Plan:
    config: Config
    dataset: dict[str, Any]
    machine: dict[str, Any]
    base: str
    probes: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    images_per_s: float | None = None  # measured at the chosen batch (None: not probed)
    warnings: list[str] = field(default_factory=list)
    estimate: dict[str, float] = field(default_factory=dict)  # minutes_per_epoch, epochs
    compile: dict[str, Any] | None = None  # the compiled step measured, the decision (None: not)

    def to_dict(self) -> dict[str, Any]:
        """plan.json: fingerprints, probe measurements, decisions and the config."""
        return {"dataset": self.dataset, "machine": self.machine, "base": self.base,
                "probes": self.probes, "images_per_s": self.images_per_s,
                "estimate": self.estimate, "compile": self.compile,
                "decisions": [asdict(d) for d in self.decisions], "warnings": self.warnings,
                "config": self.config.to_dict()}


def _spread(values: list[float], percentiles: Mapping[str, float], digits: int | None
            ) -> dict | None:
    """{"median": .., "p10": ..} of `values` (None when empty), rounded to `digits`; None:
    to whole numbers, as ints (pixel counts)."""
    if not values:
        return None
    return {name: round(float(np.percentile(values, q)), digits)
            for name, q in percentiles.items()}


def read_prepared(prep: Path) -> dict:
    """The manifest of a prepared folder.

    Raises:
        UsageError: `prep` is not a folder, has no manifest.json, or the manifest is unreadable
            (naming the path, with how to make a prepared folder).
    """
    from dermaseg.data.manifest import read_manifest

    if not prep.is_dir():
        raise UsageError(f"{prep}: no such folder, not a prepared dataset ({PREPARE_HINT})")
    if not (prep / MANIFEST).is_file():
        raise UsageError(f"{prep}: no {MANIFEST}, not a prepared dataset ({PREPARE_HINT})")
    try:
        return read_manifest(prep)
    except DermasegError as exc:
        raise UsageError(f"{exc}; prepare the folder again ({PREPARE_HINT})") from exc


def dataset_fingerprint(prep: Path) -> dict[str, Any]:
    """Counts per split (and fold), prepared size, original height/width (median, p10, p90) and
    lesion fraction (median, p5; None when the manifest predates it).

    Raises:
        UsageError: `prep` is not a prepared folder (see `read_prepared`).
    """
    manifest = read_prepared(prep)
    items = manifest["items"]
    fractions = [float(item["lesion_fraction"]) for item in items
                 if isinstance(item.get("lesion_fraction"), int | float)]
    sides = {"median": 50, "p10": 10, "p90": 90}
    return {
        "path": str(prep), "prepared_size": manifest["size"], "items": len(items),
        "counts": {split: sum(item["split"] == split for item in items) for split in SPLITS},
        "folds": manifest.get("folds"), "fold_counts": fold_counts(manifest),
        "orig_height": _spread([item["orig_height"] for item in items], sides, None),
        "orig_width": _spread([item["orig_width"] for item in items], sides, None),
        "lesion_fraction": _spread(fractions, {"median": 50, "p5": 5}, 4),
    }


def training_items(prep: Path, config: Config) -> int:
    """Items one training epoch sees: the train split, or the CV pool outside data.fold.

    Raises:
        UsageError: data.fold is set and the manifest has no such fold.
    """
    manifest = read_prepared(prep)
    if config.data.fold is None:
        return sum(item["split"] == "train" for item in manifest["items"])
    return len(fold_members(manifest, config.data.fold, str(prep / MANIFEST))[0])


def base_recipe(base: Path | None, device: str) -> tuple[Path, str]:
    """(recipe file, reason): --base (a file or a shipped recipe's name), else the shipped GPU
    recipe on CUDA, the small one elsewhere.

    Raises:
        UsageError: --base is neither a file nor a shipped recipe (the message lists them).
    """
    from dermaseg.recipes import recipe_path, shipped_recipe

    if base is not None:
        return recipe_path(base, "--base"), "given with --base"
    if device == "cuda":
        return (shipped_recipe(GPU_RECIPE),
                "CUDA GPU: DeepLab-v3+ ResNet-50 with decoder, scSE and edge head")
    where = "Apple MPS (a laptop GPU)" if device == "mps" else "CPU"
    return shipped_recipe(CPU_RECIPE), f"{where}: the small ResNet-18 recipe made for a CPU time " \
        "budget"


def plan_image_size(config: Config, prepared: int) -> Decision:
    """The recipe's image size, capped at the prepared size (upsampling adds nothing)."""
    size = config.data.image_size
    if prepared < size:
        return Decision("image size", prepared, f"prepared at {prepared} px, below the recipe's "
                        f"{size}: prepare at {size} px for this recipe")
    if prepared > size:
        return Decision("image size", size, f"the recipe's; the data, prepared at {prepared} px, "
                        f"is resized on every load: prepare at {size} px to save that")
    return Decision("image size", size, "the recipe's, the prepared size")


def plan_workers(config: Config, device: str, cores: int, items: int,
                 gpu_memory_gib: float | None = None) -> Decision:
    """GPU: min(8, cores - 1) loader workers (at least 1), saying when `data.gather_on` will
    keep the training split on the GPU instead (workers unused); elsewhere the recipe's."""
    if device != "cuda":
        return Decision("num_workers", config.data.num_workers,
                        "the recipe's: on CPU the loader competes with training for the cores")
    from dermaseg.train.device_batches import DEVICE_SHARE, split_bytes

    workers = max(1, min(8, cores - 1))
    why = (f"GPU: min(8, {cores} cores - 1) loader processes keep it fed; one core left for "
           "the training process")
    data = config.data
    nbytes = split_bytes(items, data.image_size)
    fits = gpu_memory_gib is not None and nbytes <= DEVICE_SHARE * gpu_memory_gib * 2**30
    if data.augment_on in ("auto", "device") and (
            data.gather_on == "device" or (data.gather_on == "auto" and fits)):
        why += (f"; unused while data.gather_on: {data.gather_on} keeps the {items} training "
                f"items ({nbytes / 2**30:.2f} GiB) on the GPU")
    return Decision("num_workers", workers, why)


def plan_pos_weight(config: Config, lesion: dict | None) -> Decision:
    """BCE pos_weight = round(min(10, (1 - f) / f), 1) when the median lesion fraction f < 0.1."""
    current = config.loss.pos_weight
    if lesion is None:
        return Decision("loss.pos_weight", current, "the recipe's: the manifest has no lesion "
                        "fractions (prepared by an older dermaseg)")
    f = lesion["median"]
    if f >= SMALL_LESION:
        return Decision("loss.pos_weight", current, f"the recipe's: median lesion fraction "
                        f"{f:.3f} >= {SMALL_LESION}, no strong class imbalance")
    weight = 10.0 if f <= 0 else round(min(10.0, (1 - f) / f), 1)
    return Decision("loss.pos_weight", weight, f"median lesion fraction {f:.3f} < {SMALL_LESION}:"
                    f" lesion pixels weigh (1 - f) / f in BCE (at most 10)")


def plan_batch(config: Config, device: str, items: int, probe: bool,
               report) -> tuple[Decision, list, float | None]:
    """(batch-size decision, probe measurements as dicts, images/s at the chosen batch).

    Raises:
        DermasegError: the smallest batch does not fit in memory.
    """
    import torch

    from dermaseg.train.probe import choose_batch, probe_batches

    if not probe:
        return Decision("batch size", config.data.batch_size,
                        "the recipe's, not measured (--no-probe)"), [], None
    title = (f"probing training steps on {device} at {config.data.image_size} px "
             f"({config.model.arch}, {config.model.backbone}):")
    probes = probe_batches(config, torch.device(device), items, report, title)
    batch, reason = choose_batch(probes, gpu=device != "cpu", items=items)
    speed = next(p.images_per_s for p in probes if p.batch == batch)
    return Decision("batch size", batch, reason), [p._asdict() for p in probes], speed


def plan_learning_rate(config: Config, recipe_batch: int, estimate: dict) -> list[Decision]:
    """optim.lr and optim.warmup_epochs for the planned data.batch_size, from the recipe's
    (its optim for its `recipe_batch`; `dermaseg.train.batch_rule`), the warm-up bounded by the
    epochs the run will train: train.max_epochs, or fewer when the time budget's estimate says
    so."""
    from dermaseg.train.batch_rule import scale_for_batch

    epochs = min(config.train.max_epochs, round(estimate.get("epochs", config.train.max_epochs)))
    rule = scale_for_batch(config.optim, recipe_batch, config.data.batch_size, epochs)
    warmup = ("the recipe's" if rule.warmup_epochs == config.optim.warmup_epochs else
              f"a larger batch warms up over at most a tenth of the ~{epochs} epochs (at most "
              "5, at least 1)")
    return [Decision("optim.lr", rule.lr, rule.reason),
            Decision("optim.warmup_epochs", rule.warmup_epochs, warmup)]


def epoch_minutes(items: int, images_per_s: float) -> float:
    """Minutes one epoch takes: training at `images_per_s`, plus the validation share."""
    return items / images_per_s / 60 / (1 - VALIDATION_SHARE)


def plan_time(config: Config, minutes: float | None, items: int, images_per_s: float | None,
              compile_minutes: float = 0.0) -> tuple[Decision, dict, list[str]]:
    """(train.max_minutes decision, {"minutes_per_epoch", "epochs"}, warnings).

    With `minutes`: max_minutes = minutes, epochs = (minutes - compile_minutes) * 60 * 0.85 *
    images/s / items (`compile_minutes`: torch.compile's, when the plan compiles).
    """
    budget = minutes if minutes is not None else config.train.max_minutes
    source = "--minutes" if minutes is not None else "the recipe's"
    if images_per_s is None:
        return Decision("train.max_minutes", budget, f"{source}; no time estimate without "
                        "the probe (--no-probe)"), {}, []
    per_epoch = epoch_minutes(items, images_per_s)
    estimate = {"minutes_per_epoch": round(per_epoch, 3)}
    compiling = f" after ~{compile_minutes:.1f} min compiling" if compile_minutes else ""
    if budget is None:
        total = compile_minutes + per_epoch * config.train.max_epochs
        return Decision("train.max_minutes", None, f"no budget: ~{per_epoch:.2f} min per epoch, "
                        f"~{total:.0f} min for train.max_epochs={config.train.max_epochs} (or "
                        f"less with early stopping){compiling}"), estimate, []
    epochs = max(0.0, budget - compile_minutes) / per_epoch
    estimate["epochs"] = round(epochs, 1)
    reason = (f"{source}: ~{epochs:.0f} epochs of {items} images at ~{per_epoch:.2f} min "
              f"each{compiling}")
    if epochs > config.train.max_epochs:
        reason += (f"; train.max_epochs={config.train.max_epochs} ends it first "
                   f"(~{per_epoch * config.train.max_epochs:.0f} min)")
    warnings = []
    if epochs < FEW_EPOCHS:
        warnings.append(f"only ~{epochs:.1f} epochs fit in {budget:g} min (fewer than "
                        f"{FEW_EPOCHS}): give more minutes, a smaller image size or model")
    return Decision("train.max_minutes", budget, reason), estimate, warnings


def make_plan(prep: Path, *, device: str = "auto", base: Path | None = None,
              minutes: float | None = None, probe: bool = True,
              probe_compile: bool | None = None, report=lambda line: None) -> Plan:
    """Fingerprint `prep` and this machine, then decide each setting (see the module doc).
    `probe_compile`: measure torch.compile's step (None: on CUDA only; never without `probe`).

    Raises:
        UsageError: not a prepared folder, an unknown/absent device, a missing recipe,
            minutes <= 0.
        DermasegError: a bad recipe, or no batch size that fits in memory.
    """
    from dermaseg.train.compile_choice import plan_compile

    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"--minutes {minutes}: must be > 0")
    dataset = dataset_fingerprint(prep)
    device = resolve_device(device)
    machine = machine_fingerprint(device)
    recipe, why = base_recipe(base, device)
    config = load_config(recipe)  # a bad recipe is named before minutes of probing
    name = _recipe_name(recipe)
    plan = Plan(config, dataset, machine, name, decisions=[Decision("recipe", name, why)])
    size = plan_image_size(config, dataset["prepared_size"])
    config = config.updated({"data.image_size": size.value})
    items = training_items(prep, config)
    if items < 1:
        raise UsageError(f"{prep / MANIFEST}: no training items; prepare more data")
    batch, plan.probes, plan.images_per_s = plan_batch(config, device, items, probe, report)
    recipe_batch = config.data.batch_size
    config = config.updated({"data.batch_size": batch.value})
    compiled = plan_compile(config, device, items, plan.images_per_s, minutes, probe_compile,
                            report)
    plan.compile = compiled.record
    config = config.updated(compiled.overrides())
    workers = plan_workers(config, device, machine["cpu_cores"], items,
                           machine.get("gpu_memory_gib"))
    config = config.updated({"data.num_workers": workers.value})
    weight = plan_pos_weight(config, dataset["lesion_fraction"])
    config = config.updated({"loss.pos_weight": weight.value})
    budget, plan.estimate, plan.warnings = plan_time(config, minutes, items,
                                                     compiled.images_per_s,
                                                     compiled.compile_minutes)
    plan.warnings += busy_warning(machine, probe)
    rates = plan_learning_rate(config, recipe_batch, plan.estimate)
    config = config.updated({d.name: d.value for d in rates})
    per_epoch = plan.estimate.get("minutes_per_epoch")
    plan.config = config.updated({
        "train.max_minutes": budget.value,
        # training compares its epochs with this (dermaseg.train.pace)
        "train.expected_epoch_seconds": None if per_epoch is None else round(per_epoch * 60, 2),
    })
    plan.decisions += [size, batch, *rates, workers, weight, compiled.decision, budget]
    return plan


def _recipe_name(recipe: Path) -> str:
    """A shipped recipe by its name ("cpu_small"), any other by its path."""
    from dermaseg.recipes import RECIPES_DIR

    return recipe.stem if recipe.resolve().parent == RECIPES_DIR else str(recipe)
