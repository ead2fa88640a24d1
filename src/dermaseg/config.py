"""The recipe as pydantic models: validated once, immutable (reading, `--set` overrides and
saving: `dermaseg.config_io`).

A recipe is a YAML file (or a shipped one by name, `dermaseg recipes list`) with the sections
below; anything left out takes the default here. A model refuses unknown keys (with a
did-you-mean) and out-of-range values, naming the field path: `optim.lr: must be > 0, got 0.0`.
Configs are immutable: `config.updated({"data.batch_size": 4})` returns a new, validated one.
The resolved config is saved with every run and inside every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from dermaseg.config_errors import describe_errors
from dermaseg.errors import DermasegError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["plateau", "cosine", "poly", "none"]
Place = Literal["auto", "loader", "device"]
Tracker = Literal["tensorboard", "mlflow", "wandb"]
ColourConstancyMethod = Literal["none", "shades_of_gray"]
# torch.compile's modes; reduce-overhead replays the model's kernels as CUDA graphs.
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
OPTIMIZERS, SCHEDULERS, COMPILE_MODES = get_args(Optimizer), get_args(Scheduler), \
    get_args(CompileMode)


def _number_as_text(value: Any) -> Any:
    """YAML reads `precision: 16` as a number: take it as the text it means."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Probability = Annotated[float, Field(ge=0, le=1)]
Precision = Annotated[Literal["auto", "32", "bf16", "16"], BeforeValidator(_number_as_text)]
RGB = Annotated[list[float], Field(min_length=3, max_length=3)]
PositiveRGB = Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A recipe section: unknown keys refused, immutable; errors name the field's path."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
    section_path: ClassVar[str] = ""  # where the section sits in Config ("data.augment")

    def __init__(self, **data: Any) -> None:
        """Raises: DermasegError naming each wrong field ("data.batch_size: must be >= 1...")."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise DermasegError(validation_message(exc, data, self.section_path)) from None

    # A section inside another is validated by pydantic itself (not through this __init__),
    # so the outer model reports all the errors at once (pydantic's RootModel does the same).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def updated(self: S, changes: Mapping[str, Any] | None = None, /, **fields: Any) -> S:
        """A new validated copy with fields replaced; dotted keys ("data.batch_size") reach
        into the sections. `fields` are plain names (`loss.updated(boundary=0.0)`). data.mean
        and std keep the values filled in when the config was first built.

        Raises:
            DermasegError: naming the field path: an unknown key or a wrong value.
        """
        data = self.model_dump()
        for key, value in {**(changes or {}), **fields}.items():
            _set_path(data, key, value.model_dump() if isinstance(value, BaseModel) else value,
                      self.section_path)
        return type(self)(**data)


def _set_path(data: dict[str, Any], key: str, value: Any, prefix: str) -> None:
    """Raises: DermasegError when a part of `key` before the last names a value."""
    *sections, name = key.split(".")
    node = data
    for depth, part in enumerate(sections):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(filter(None, [prefix, *sections[:depth + 1]]))
            raise DermasegError(f"{where} is a value, not a section (setting {key})")
    node[name] = value


class ModelConfig(Section):
    section_path: ClassVar[str] = "model"

    arch: Literal["deeplabv3", "deeplabv3plus"] = Field(
        default="deeplabv3", description="deeplabv3plus adds the low-level decoder")
    backbone: str = Field(default="resnet50", description="a timm name, see "
                          "dermaseg.models.backbones.BACKBONES")
    output_stride: Literal[8, 16] = 16
    atrous_rates: list[int] | None = Field(
        default=None, description="ASPP rates; null: 6/12/18 at output stride 16, 12/24/36 at 8")
    aspp_channels: int = Field(default=256, ge=1)
    aspp_dropout: float = Field(default=0.1, ge=0, lt=1)
    decoder_channels: int = Field(default=256, ge=1, description="v3+ decoder width")
    attention: Literal["scse"] | None = Field(
        default=None, description="scse: channel+spatial attention after ASPP/decoder")
    edge_head: bool = Field(default=False, description="auxiliary boundary head (training only)")
    pretrained: Literal["imagenet"] | None = Field(
        default=None, description="imagenet: timm's ImageNet weights (needs network once)")
    weights: str | None = Field(default=None, description="local backbone weights: "
                                ".safetensors or a state dict")
    freeze_stages: int = Field(
        default=0, ge=-1, description="freeze the first N of 5 backbone stages (stem, /4, /8, /16, "
        "last; -1: the whole backbone); their BatchNorm stays in eval mode")


class AugmentConfig(Section):
    section_path: ClassVar[str] = "data.augment"

    hflip: Probability = Field(default=0.5, description="probability of a horizontal flip")
    vflip: Probability = Field(default=0.5, description="probability of a vertical flip")
    brightness: float = Field(default=0.2, ge=0, le=1, description="+/- fraction")
    contrast: float = Field(default=0.2, ge=0, le=1, description="factor in [1 - c, 1 + c]")
    elastic_p: Probability = Field(default=0.25,
                                   description="probability of an elastic deformation")
    elastic_alpha: float = Field(default=8.0, ge=0, description="largest shift of a control point, "
                                 "pixels of the network input")
    elastic_sigma: float = Field(default=32.0, gt=0, description="spacing of the random control "
                                 "points, pixels (larger: smoother)")
    rotate90: Probability = Field(default=0.0, description="probability of a random multiple-of-90 "
                                  "rotation (square inputs)")
    # Robustness to other clinics' dermoscopes (all off at 0; dermaseg.data.augment_photometric)
    scale: float = Field(default=0.0, ge=0, le=0.9, description="zoom by a factor drawn from "
                         "[1 - s, 1 + s] about a random point of the image, image and mask "
                         "together (outside the image: 0, as the letterbox)")
    hue: float = Field(default=0.0, ge=0, le=0.5, description="largest hue rotation, fraction of "
                       "the colour circle (0.05: +/-18 degrees), about the grey axis (YIQ)")
    saturation: float = Field(default=0.0, ge=0, le=1, description="saturation factor in "
                              "[1 - s, 1 + s] (torchvision's adjust_saturation)")
    gamma: float = Field(default=0.0, ge=0, le=4, description="gamma drawn log-uniformly from "
                         "[1 / (1 + g), 1 + g]: 255 (v / 255)^gamma, first, on the uint8 image")
    blur_p: Probability = Field(default=0.0, description="probability of a Gaussian blur")
    blur_sigma: float = Field(default=1.5, gt=0, le=8, description="largest blur sigma, pixels of "
                              "the network input (drawn from [sigma / 4, sigma])")
    noise: float = Field(default=0.0, ge=0, le=64, description="largest standard deviation of "
                         "additive Gaussian noise, 0..255 units (drawn from [0, noise])")
    vignette_p: Probability = Field(default=0.0, description="probability of a dark circular "
                                    "dermoscope vignette (radius 0.45-0.75 of the side)")
    hair_p: Probability = Field(default=0.0, description="probability of 1-4 thin dark hairs "
                                "(slightly curved lines) drawn on the image")


class DataConfig(Section):
    section_path: ClassVar[str] = "data"

    image_size: int = Field(default=512, ge=1, description="side of the square network input "
                            "(resize keeping aspect + pad)")
    mean: RGB | None = Field(default=None, description="RGB in 0..1; null: what the backbone's "
                             "ImageNet weights expect (filled in by Config)")
    std: PositiveRGB | None = Field(default=None, description="RGB in 0..1; null: as mean")
    colour_constancy: ColourConstancyMethod = Field(
        default="none", description="shades_of_gray: each network input's colours corrected "
        "(Finlayson & Trezzi 2004, the ISIC 2019 winners' step), before the mean/std; kept in the "
        "model's metadata, so every consumer applies it")
    colour_constancy_p: float = Field(
        default=6.0, ge=1, le=16, description="Minkowski norm p of shades_of_gray's illuminant "
        "estimate (1: grey world; larger: closer to max-RGB)")
    batch_size: int = Field(default=8, ge=1)
    val_batch_size: int | None = Field(
        default=None, ge=1, description="validation batch per process; null: twice "
        "data.batch_size (validation keeps no activations for a backward pass, so twice the "
        "batch takes less memory than a training step)")
    num_workers: int = Field(default=-1, ge=-1, description="-1: one per CPU core, up to 8")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    augment_on: Place = Field(default="auto", description="auto: the device on a GPU, the loader "
                              "workers on CPU")
    gather_on: Place = Field(
        default="auto", description="where training batches are gathered; auto: the split "
        "copied to the GPU once, when the augmentation runs there and it takes <= 1/4 of its "
        "memory")
    fold: int | None = Field(default=None, ge=0, description="cross-validation: train on the other "
                             "folds of `data prepare --folds`, validate on this one")

    @property
    def validation_batch(self) -> int:
        """The validation batch size: `val_batch_size`, or twice `batch_size` when null."""
        return self.val_batch_size or 2 * self.batch_size


class LossConfig(Section):
    """Weights and shapes of the loss terms (checked by `dermaseg.train.losses`, which uses
    them)."""

    section_path: ClassVar[str] = "loss"

    dice: float = Field(default=1.0, description="weight of soft Dice")
    bce: float = Field(default=1.0, description="weight of binary cross-entropy")
    focal: float = Field(default=0.0, description="weight of focal loss")
    focal_gamma: float = 2.0
    pos_weight: float | None = Field(default=None, description="BCE weight of lesion pixels")
    label_smoothing: float = Field(default=0.0, description="targets become t * (1 - a) + a / 2")
    boundary: float = Field(default=0.0, description="weight of the edge-head loss (needs "
                            "model.edge_head)")
    boundary_width: int = Field(default=3,
                                description="width in pixels of the boundary band target")


class OptimConfig(Section):
    section_path: ClassVar[str] = "optim"

    name: Optimizer = "adam"
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Scheduler = "plateau"
    plateau_factor: float = Field(default=0.5, gt=0, lt=1)
    plateau_patience: int = Field(default=3, ge=0)
    warmup_epochs: int = Field(default=0, ge=0)
    anneal_by_time: bool = Field(
        default=False, description="cosine/poly: progress = max(step / total steps, elapsed / "
        "train.max_minutes), so the schedule ends within the time budget")


class TrainConfig(Section):
    section_path: ClassVar[str] = "train"

    max_epochs: int = Field(default=100, ge=1)
    max_minutes: float | None = Field(default=None, gt=0, description="wall-clock budget; stops "
                                      "cleanly when reached")
    min_epochs: int = Field(default=0, ge=0, description="with max_minutes: at least this many "
                            "epochs, past the budget if need be (a slow or busy machine)")
    expected_epoch_seconds: float | None = Field(
        default=None, gt=0, description="an epoch's duration as `dermaseg plan` measured it; a run "
        "whose epochs take far longer says so")
    early_stop_patience: int = Field(default=10, ge=0, description="epochs without val-loss "
                                     "improvement")
    precision: Precision = Field(default="auto", description="auto: bf16 on GPU, 32 on CPU")
    channels_last: bool = Field(default=True, description="on GPU only")
    compile: bool = Field(default=False, description="torch.compile the model, in compile_mode")
    compile_mode: CompileMode = "default"
    seed: int = 42
    freeze_backbone_epoch: int | None = Field(default=None, ge=0, description="from this epoch, "
                                              "train only ASPP + decoder")
    freeze_after_lr_drops: int | None = Field(default=None, ge=0, description="or after the "
                                              "plateau scheduler cut the LR k times")
    val_every: int = Field(default=1, ge=1)
    ema_decay: float | None = Field(default=None, gt=0, lt=1, description="validate, keep and "
                                    "export an exponential moving average of the weights, with "
                                    "this decay per step after a warm-up (0.99 in cpu_small); "
                                    "null: off")
    devices: str = "auto"
    num_nodes: int = Field(default=1, ge=1)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    fit_quality: bool = Field(default=True, description="after training, fit the mask quality "
                              "estimate on the validation images and store it in best.ckpt")
    nan_tolerance: int = Field(default=3, ge=0, description="skip up to N non-finite-loss batches "
                               "in a row, then stop")
    checkpoint_every_steps: int = Field(default=50, ge=0, description="also write last.ckpt "
                                        "every N optimizer steps (0: off)")
    checkpoint_every_minutes: float = Field(
        default=1.0, ge=0, description="but at most once per this many minutes (0: at every save "
        "point); always at the end of the run")
    loggers: list[Tracker] = Field(
        default_factory=list, description="experiment trackers that also receive the run "
        "(each an extra: pip install 'dermaseg[tensorboard]'); see dermaseg.train.tracking")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI; null: a local "
                                     "store in RUN_DIR/mlruns/")
    experiment: str = Field(default="dermaseg", min_length=1, description="MLflow experiment "
                            "and W&B project name")


class Config(Section):
    """The whole recipe. data.mean/std left null are filled in from model.backbone."""

    model_config = ConfigDict(title="dermaseg recipe")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill_normalisation(cls, data: Any) -> Any:
        """data.mean/std left out: what model.backbone's pretrained weights expect."""
        if not isinstance(data, dict):
            return data
        section = data.get("data", {})
        section = section.model_dump() if isinstance(section, BaseModel) else section
        model = data.get("model", {})
        backbone = model.backbone if isinstance(model, ModelConfig) else \
            model.get("backbone", "resnet50") if isinstance(model, dict) else None
        if not isinstance(section, dict) or not isinstance(backbone, str) or (
                section.get("mean") is not None and section.get("std") is not None):
            return data  # complete, or malformed: validation names what is wrong
        mean, std = backbone_normalisation(backbone)
        filled = {"mean": list(mean) if section.get("mean") is None else section["mean"],
                  "std": list(std) if section.get("std") is None else section["std"]}
        return {**data, "data": {**section, **filled}}

    @model_validator(mode="after")
    def _agree(self, info: ValidationInfo) -> Config:
        """Settings that contradict each other (not checked for a checkpoint's inference)."""
        if info.context and info.context.get("fields") is not None:
            return self
        if self.train.freeze_after_lr_drops is not None and self.optim.scheduler != "plateau":
            raise ValueError(
                "train.freeze_after_lr_drops: counts the LR cuts of optim.scheduler=plateau, "
                f"got optim.scheduler={self.optim.scheduler!r}; use train.freeze_backbone_epoch")
        if self.loss.boundary > 0 and not self.model.edge_head:
            raise ValueError(f"loss.boundary={self.loss.boundary} needs model.edge_head=true "
                             "(the edge head's logits), or set loss.boundary=0")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict flattened to field paths: {"optim": {"lr": 0.001}} -> {"optim.lr": 0.001}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def backbone_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's pretrained weights expect; ImageNet's for an unknown name
    (building the model reports the name)."""
    from dermaseg.models.backbones import pretrained_normalisation

    try:
        return pretrained_normalisation(backbone)
    except DermasegError:
        return IMAGENET_MEAN, IMAGENET_STD


# The rule of a field when its constraints alone do not say it well.
RULES: dict[str, str] = {
    "data.num_workers": ">= 0, or -1 (one per CPU core)",
    "data.fold": ">= 0 (or null: the plain train/val split)",
    "data.mean": "3 values (R, G, B)",
    "data.std": "3 values (R, G, B), each > 0",
    **{f"data.augment.{name}": "a probability in [0, 1]"
       for name in ("hflip", "vflip", "elastic_p", "rotate90", "blur_p", "vignette_p", "hair_p")},
    "model.freeze_stages": ">= 0 (stages), or -1 (the whole backbone)",
    "train.max_minutes": "> 0 (or null: no time budget)",
    "train.expected_epoch_seconds": "> 0 (or null: not measured)",
    "train.freeze_backbone_epoch": ">= 0 (or null)",
    "train.freeze_after_lr_drops": ">= 0 (or null)",
    "train.checkpoint_every_steps": ">= 0 (0: only at epoch ends)",
    "train.checkpoint_every_minutes": ">= 0 (0: at every save point)",
}


def validation_message(exc: ValidationError, data: Any, prefix: str = "") -> str:
    """One line per wrong field of `data` (validated as the section at `prefix`)."""
    return describe_errors(exc, data, Config, RULES, prefix)


