"""Typed configuration: dataclasses, YAML in and out, `key=value` overrides.

A recipe in `configs/` is a YAML file with the sections below; anything left out takes the
default here. The resolved config is saved with every run and inside every checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from dermaseg.errors import DermasegError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "poly", "none")


@dataclass
class ModelConfig:
    arch: str = "deeplabv3"  # "deeplabv3" or "deeplabv3plus" (adds the low-level decoder)
    backbone: str = "resnet50"  # a timm name, see dermaseg.models.backbones.BACKBONES
    output_stride: int = 16  # 16 or 8
    atrous_rates: list[int] | None = None  # None: 6/12/18 at OS16, 12/24/36 at OS8
    aspp_channels: int = 256
    aspp_dropout: float = 0.1
    decoder_channels: int = 256  # v3+ decoder width
    attention: str | None = None  # None or "scse": channel+spatial attention after ASPP/decoder
    edge_head: bool = False  # auxiliary boundary head (training only unless asked)
    pretrained: str | None = None  # None or "imagenet" (timm weights; needs network)
    weights: str | None = None  # local backbone weights: .safetensors or a state dict
    freeze_stages: int = 0  # freeze the first N of 5 backbone stages (stem, /4, /8, /16, last;
    # -1: the whole backbone); their BatchNorm stays in eval mode


@dataclass
class AugmentConfig:
    hflip: float = 0.5  # probability
    vflip: float = 0.5
    brightness: float = 0.2  # +/- fraction
    contrast: float = 0.2  # factor in [1 - c, 1 + c]
    elastic_p: float = 0.25  # probability of an elastic deformation
    elastic_alpha: float = 8.0  # largest shift of a control point, pixels of the network input
    elastic_sigma: float = 32.0  # spacing of the random control points, pixels (larger: smoother)
    rotate90: float = 0.0  # probability of a random multiple-of-90 rotation (square inputs)


@dataclass
class DataConfig:
    image_size: int = 512  # side of the square network input (resize keeping aspect + pad)
    # RGB in 0..1; None: what the backbone's ImageNet weights expect (0.5/0.5 for xception65,
    # ImageNet's mean/std for the others), filled in by Config
    mean: list[float] | None = None
    std: list[float] | None = None
    batch_size: int = 8
    num_workers: int = -1  # -1: one per CPU core, up to 8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_on: str = "auto"  # auto (device on a GPU, loader on CPU) | loader | device
    # where training batches are gathered: auto (device: the split copied to the GPU once, when
    # the augmentation runs there and it takes <= 1/4 of the GPU's memory) | loader | device
    gather_on: str = "auto"
    # cross-validation: train on the other folds of `data prepare --folds`, validate on this one
    fold: int | None = None


@dataclass
class LossConfig:
    dice: float = 1.0  # weight of soft Dice
    bce: float = 1.0  # weight of binary cross-entropy
    focal: float = 0.0  # weight of focal loss
    focal_gamma: float = 2.0
    pos_weight: float | None = None  # BCE weight of lesion pixels (class imbalance)
    label_smoothing: float = 0.0  # targets become t * (1 - a) + a / 2
    boundary: float = 0.0  # weight of the edge-head loss (needs model.edge_head)
    boundary_width: int = 3  # width in pixels of the boundary band target


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # plateau | cosine | poly | none
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    warmup_epochs: int = 0
    # cosine/poly: progress = max(step / total steps, elapsed / train.max_minutes), so the
    # schedule ends within the time budget (runs are then not bit-reproducible)
    anneal_by_time: bool = False


@dataclass
class TrainConfig:
    max_epochs: int = 100
    max_minutes: float | None = None  # wall-clock budget; stops cleanly when reached
    early_stop_patience: int = 10  # epochs without val-loss improvement
    precision: str = "auto"  # auto (bf16 on GPU, 32 on CPU) | 32 | bf16 | 16
    channels_last: bool = True  # on GPU only
    compile: bool = False  # torch.compile the model, in compile_mode (made for a GPU)
    compile_mode: str = "default"  # or reduce-overhead (CUDA graphs), max-autotune...
    seed: int = 42
    freeze_backbone_epoch: int | None = None  # from this epoch, train only ASPP + decoder
    freeze_after_lr_drops: int | None = None  # or after the plateau scheduler cut the LR k times
    val_every: int = 1
    devices: str = "auto"
    num_nodes: int = 1
    threshold: float = 0.5
    nan_tolerance: int = 3  # skip up to N non-finite-loss batches in a row, then stop
    checkpoint_every_steps: int = 50  # also write last.ckpt every N optimizer steps (0: off)
    # but at most once per this many minutes (each epoch's end is a save point too; 0: every
    # save point); always at the end of the run
    checkpoint_every_minutes: float = 1.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.mean is None or self.data.std is None:
            mean, std = backbone_normalisation(self.model.backbone)
            self.data.mean = list(mean) if self.data.mean is None else self.data.mean
            self.data.std = list(std) if self.data.std is None else self.data.std

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def backbone_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's pretrained weights expect; ImageNet's for an unknown name
    (validation reports the name)."""
    from dermaseg.models.backbones import pretrained_normalisation

    try:
        return pretrained_normalisation(backbone)
    except DermasegError:
        return IMAGENET_MEAN, IMAGENET_STD


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise DermasegError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DermasegError(
            f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise DermasegError(f"{where}: must not be empty")
    for kind in (bool, int, float, str):
        if text.startswith(kind.__name__) or text == f"<class '{kind.__name__}'>":
            return _as_kind(value, kind, where)
    if text.startswith("list"):
        if not isinstance(value, list | tuple):
            raise DermasegError(f"{where}: expected a list, got {value!r}")
        item_kind = float if "float" in text else int if "int" in text else str
        return [_as_kind(v, item_kind, where) for v in value]
    return value


def _as_kind(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "1", "0", "yes", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise DermasegError(f"{where}: expected true/false, got {value!r}")
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it means.
        with contextlib.suppress(ValueError):
            return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # `precision: 16`, `devices: 2` read as numbers by YAML
    raise DermasegError(f"{where}: expected {kind.__name__}, got {value!r}")


def config_from_dict(data: dict[str, Any] | None, where: str = "config",
                     fields: tuple[str, ...] | None = None) -> Config:
    """Build a Config from a nested dict and validate it (`validate_config`; `fields`: only
    those, e.g. INFERENCE_FIELDS for a checkpoint's config).

    Raises:
        DermasegError: naming `where` and the field when a field is unknown or a value wrong.
    """
    config = _build(Config, data or {}, where)
    try:
        validate_config(config, fields)
    except DermasegError as exc:
        raise DermasegError(f"{where}: {exc}" if where != "config" else str(exc)) from None
    return config


# What inference reads from a checkpoint's config: training settings that a later release
# checks more strictly must not stop an old model from predicting.
INFERENCE_FIELDS = ("model.", "data.image_size", "data.mean", "data.std", "train.threshold")


def _probability(v: float) -> bool:
    return 0 <= v <= 1


def _optional(minimum: float) -> Any:
    return lambda v: v is None or v >= minimum


# torch.compile's modes; reduce-overhead replays the model's kernels as CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# (field, test, what the value must be). Names, rates and stride are checked where they are
# used (models, losses, device augmentation), also before anything is written.
RULES: list[tuple[str, Any, str]] = [
    ("data.image_size", lambda v: v >= 1, ">= 1"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= -1, ">= 0, or -1 (one per CPU core)"),
    ("data.fold", _optional(0), ">= 0 (or null: the plain train/val split)"),
    ("data.gather_on", lambda v: v in ("auto", "loader", "device"), "auto, loader or device"),
    ("data.mean", lambda v: len(v) == 3, "3 values (R, G, B)"),
    ("data.std", lambda v: len(v) == 3 and all(s > 0 for s in v), "3 values (R, G, B), each > 0"),
    *((f"data.augment.{name}", _probability, "a probability in [0, 1]")
      for name in ("hflip", "vflip", "elastic_p", "rotate90")),
    ("data.augment.brightness", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.augment.contrast", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.augment.elastic_alpha", lambda v: v >= 0, ">= 0"),
    ("data.augment.elastic_sigma", lambda v: v > 0, "> 0"),
    ("model.aspp_channels", lambda v: v >= 1, ">= 1"),
    ("model.decoder_channels", lambda v: v >= 1, ">= 1"),
    ("model.aspp_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.freeze_stages", lambda v: v >= -1, ">= 0 (stages), or -1 (the whole backbone)"),
    ("optim.name", lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    ("optim.scheduler", lambda v: v in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.plateau_factor", lambda v: 0 < v < 1, "in (0, 1)"),
    ("optim.plateau_patience", lambda v: v >= 0, ">= 0"),
    ("optim.warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("train.max_epochs", lambda v: v >= 1, ">= 1"),
    ("train.max_minutes", lambda v: v is None or v > 0, "> 0 (or null: no time budget)"),
    ("train.early_stop_patience", lambda v: v >= 0, ">= 0"),
    ("train.freeze_backbone_epoch", _optional(0), ">= 0 (or null)"),
    ("train.freeze_after_lr_drops", _optional(0), ">= 0 (or null)"),
    ("train.val_every", lambda v: v >= 1, ">= 1"),
    ("train.num_nodes", lambda v: v >= 1, ">= 1"),
    ("train.threshold", lambda v: 0 < v < 1, "in (0, 1)"),
    ("train.nan_tolerance", lambda v: v >= 0, ">= 0"),
    ("train.compile_mode", lambda v: v in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}"),
    ("train.checkpoint_every_steps", lambda v: v >= 0, ">= 0 (0: only at epoch ends)"),
    ("train.checkpoint_every_minutes", lambda v: v >= 0, ">= 0 (0: at every save point)"),
]


def validate_config(config: Config, fields: tuple[str, ...] | None = None) -> None:
    """Refuse values out of range, and settings that contradict each other; with `fields`
    (names or prefixes) only the rules of those fields.

    Raises:
        DermasegError: "<section.field>: must be ..., got VALUE" for the first bad field.
    """
    for name, test, rule in RULES:
        if fields is not None and not name.startswith(fields):
            continue
        section, *rest = name.split(".")
        value = getattr(config, section)
        for part in rest:
            value = getattr(value, part)
        if not test(value):
            raise DermasegError(f"{name}: must be {rule}, got {value!r}")
    if fields is not None:
        return
    if config.train.freeze_after_lr_drops is not None and config.optim.scheduler != "plateau":
        raise DermasegError(
            "train.freeze_after_lr_drops: counts the LR cuts of optim.scheduler=plateau, got "
            f"optim.scheduler={config.optim.scheduler!r}; use train.freeze_backbone_epoch")
    if config.loss.boundary > 0 and not config.model.edge_head:
        raise DermasegError(f"loss.boundary={config.loss.boundary} needs model.edge_head=true "
                            "(the edge head's logits), or set loss.boundary=0")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or defaults when `path` is None) and apply `section.key=value` overrides.

    Raises:
        DermasegError: naming the file (or the --set) and field: bad YAML, a wrong value.
    """
    data: dict[str, Any] = {}
    where = "config" if path is None else str(path)
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise UsageError(f"{path}: no such recipe file") from exc
        except OSError as exc:
            raise DermasegError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        except UnicodeDecodeError as exc:
            raise DermasegError(f"{path}: not a YAML text file (not UTF-8: {exc.reason} at "
                                f"byte {exc.start})") from exc
        except yaml.YAMLError as exc:
            raise DermasegError(f"{path}: not valid YAML ({exc})") from exc
    merged = copy.deepcopy(data)
    for item in overrides or []:
        apply_override(merged, item)
    try:
        return config_from_dict(merged, where)
    except DermasegError:
        if _error_of(data, where) is None and (named := _override_error(data, overrides or [])):
            raise named from None  # the recipe alone is valid: that --set is wrong
        raise


def _error_of(data: dict[str, Any], where: str) -> DermasegError | None:
    try:
        config_from_dict(copy.deepcopy(data), where)
    except DermasegError as exc:
        return exc
    return None


def _override_error(data: dict[str, Any], overrides: list[str]) -> UsageError | None:
    """The error of the first override that is wrong on its own, named as given."""
    for item in overrides:
        alone = copy.deepcopy(data)
        apply_override(alone, item)
        error = _error_of(alone, "config")
        if error is not None:
            return UsageError(f"--set {item}: {str(error).removeprefix('config.')}")
    return None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item}: expected section.key=value")
    parts = key.strip().split(".")
    _check_override_key(item, parts)
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set {item}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def _check_override_key(item: str, parts: list[str]) -> None:
    """Raises UsageError naming the override when its key is not a field of Config."""
    import difflib

    section = Config
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if not dataclasses.is_dataclass(section):
            raise UsageError(f"--set {item}: {where} is a value, not a section")
        names = sorted(f.name for f in fields(section))
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {'.'.join([*parts[:depth], close[0]])}?" if close else ""
            raise UsageError(f"--set {item}: no field {part!r} in {where or 'the config'}{hint}"
                             f" (valid: {', '.join(names)})")
        section = get_type_hints(section)[part]


def save_config(config: Config, path: str | Path) -> None:
    from dermaseg.fileio import write_bytes_atomic

    write_bytes_atomic(path, config.to_yaml().encode())
