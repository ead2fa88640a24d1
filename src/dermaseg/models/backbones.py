"""Backbones by name: a timm feature extractor with a dilated last stage, stage freezing, weights.

`build_backbone(name, output_stride=16)` returns a `Backbone` whose forward gives the five
feature maps of the network (strides 2, 4, 8, 16|8, 16|8 for an input (N, 3, H, W)). timm does the
dilation itself (`output_stride`), for every name in BACKBONES, Xception-65 included.

Weights:
- `pretrained="imagenet"`: timm's ImageNet weights from the Hugging Face hub. Without network
  this fails at once (a short connection test first) with the file to fetch by hand.
- `weights=PATH`: a local `.safetensors` file or a torch state dict (read with
  `weights_only=True`, so no pickled code runs): a timm/hub classifier file, a backbone
  `state_dict()` or a whole dermaseg model/Lightning checkpoint (the backbone part is taken).
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import socket
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

from dermaseg.errors import DermasegError

HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str  # timm architecture (optionally with .tag for the pretrained weights)
    note: str


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("resnet50", "the DeepLab-v3 paper's backbone; 23.5 M params"),
    "resnet101": BackboneSpec("resnet101", "deeper ResNet; best accuracy, slowest"),
    "xception65": BackboneSpec("xception65", "aligned Xception-65 of DeepLab-v3+"),
    "resnet18": BackboneSpec("resnet18", "small, for CPU runs and tests"),
    "mobilenetv3_large_100": BackboneSpec("mobilenetv3_large_100", "mobile, fastest on CPU"),
    "efficientnet_b0": BackboneSpec("efficientnet_b0", "small and accurate"),
}

NUM_STAGES = 5


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise DermasegError(
            f"model.backbone: unknown backbone {name!r}; valid: {', '.join(BACKBONES)}"
        )
    return BACKBONES[name]


def pretrained_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std), RGB in 0..1, of the images backbone `name`'s ImageNet weights were trained
    on (timm's pretrained config)."""
    cfg = timm.models.get_pretrained_cfg(_spec(name).timm_name)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)


def hub_file_url(name: str) -> str:
    """Where timm's ImageNet weights for backbone `name` live (what to fetch by hand)."""
    cfg = timm.models.get_pretrained_cfg(_spec(name).timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        return f"{_hub_endpoint()}/{hub_id}/resolve/main/model.safetensors"
    return getattr(cfg, "url", "") or f"(timm has no pretrained file for {name})"


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_cached(name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(_spec(name).timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    cache = os.environ.get("HF_HUB_CACHE")  # read now, not at huggingface_hub's import
    return any(isinstance(try_to_load_from_cache(hub_id, f, cache_dir=cache), str)
               for f in ("model.safetensors", "pytorch_model.bin"))


def _check_hub_reachable(name: str) -> None:
    host, port, via = _first_hop(urlparse(_hub_endpoint()))
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as exc:
        why = f"{via}{host}:{port} unreachable: {exc}"
        raise DermasegError(_offline_message(name, why)) from exc


def _first_hop(url) -> tuple[str, int, str]:
    """(host, port, label) the download connects to first: the HTTP(S) proxy when the
    environment names one for this host (HTTPS_PROXY, ALL_PROXY, NO_PROXY), else the hub."""
    default = 443 if url.scheme == "https" else 80
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.hostname or ""):
        return url.hostname or "", url.port or default, ""
    hop = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return hop.hostname or "", hop.port or (443 if hop.scheme == "https" else 80), "proxy "


def _offline_message(name: str, why: str) -> str:
    return (
        f"model.pretrained=imagenet: cannot download the {name} ImageNet weights ({why}). "
        f"Fetch {hub_file_url(name)} on a machine with network, then set "
        f"`model.weights: PATH/TO/model.safetensors` (and `model.pretrained: null`)."
    )


class Backbone(nn.Module):
    """timm feature extractor: (N, 3, H, W) -> list of 5 maps, strides 2, 4, 8, 16|8, 16|8.

    Attributes:
        channels: channels of each of the 5 feature maps.
        reductions: stride of each map.
        mean, std: the normalisation its pretrained weights expect.
    """

    def __init__(self, name: str, *, output_stride: int = 16, pretrained: bool = False) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise DermasegError(f"model.output_stride: must be 8 or 16, got {output_stride}")
        spec = _spec(name)
        self.name = name
        self.output_stride = output_stride
        self.body = timm.create_model(
            spec.timm_name, features_only=True, output_stride=output_stride,
            pretrained=pretrained,
        )
        info = cast(FeatureInfo, self.body.feature_info)  # set by timm's features_only
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self._stage_of = _assign_stages(self.body, info.module_name())
        self._frozen_bn: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    @property
    def num_stages(self) -> int:
        return NUM_STAGES

    def freeze(self, stages: int | None = None) -> None:
        """Freeze the first `stages` stages (None, -1 or >= 5: the whole backbone).

        Frozen parameters stop requiring gradients (their .grad is dropped) and the BatchNorm
        layers inside stay in eval mode, even when `.train()` is called.
        """
        if stages is None or stages < 0 or stages > NUM_STAGES:
            stages = NUM_STAGES
        self.unfreeze()
        for module_name, module in self.body.named_modules():
            if self._stage_of.get(module_name, NUM_STAGES) >= stages:
                continue
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
                param.grad = None
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                self._frozen_bn.append(module)
                module.eval()

    def unfreeze(self) -> None:
        """Make every backbone parameter trainable again; BatchNorm follows `.train()` again."""
        for param in self.body.parameters():
            param.requires_grad_(True)
        for module in self._frozen_bn:
            module.train(self.training)
        self._frozen_bn = []

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self._frozen_bn:
            module.eval()
        return self


def _assign_stages(body: nn.Module, feature_modules: list[str]) -> dict[str, int]:
    """Map each submodule name of `body` to its stage 0..4 (stage k ends at feature module k).

    The order is the order modules run, recorded by hooks on a tiny eval forward pass: a module
    belongs to the first stage whose feature module finishes after the module starts. So a
    residual shortcut registered before its block but run after the block's feature point (as
    in timm's Xception) belongs to the next stage. timm's FeatureHookNet renames `a.0` to `a_0`,
    so both spellings are tried.
    """
    modules = dict(body.named_modules())
    targets = [_resolve_name(feature, set(modules)) for feature in feature_modules]
    clock, starts, ends = itertools.count(), {}, {}

    def stamp(times: dict, key) -> None:  # hooks must return None (or they replace the input)
        times.setdefault(key, next(clock))

    hooks = [module.register_forward_pre_hook(lambda _m, _a, name=name: stamp(starts, name))
             for name, module in modules.items()]
    hooks += [modules[target].register_forward_hook(lambda _m, _a, _o, k=k: stamp(ends, k))
              for k, target in enumerate(targets)]
    was_training = body.training
    try:
        body.eval()
        with torch.no_grad():
            body(torch.zeros(1, 3, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
        body.train(was_training)
    last = len(targets) - 1
    return {name: next((k for k in range(last) if starts.get(name, ends[last]) < ends[k]), last)
            for name in modules}


def _resolve_name(name: str, known: set[str]) -> str:
    if name in known:
        return name
    flat = re.sub(r"^([A-Za-z_]\w*)\.(\d+)(?=\.|$)", r"\1_\2", name)
    if flat in known:
        return flat
    raise DermasegError(f"backbone: cannot find feature module {name!r} (timm version mismatch?)")


def create_backbone(
    name: str, *, output_stride: int = 16, pretrained: str | None = None,
    weights: str | os.PathLike | None = None,
) -> Backbone:
    """Build backbone `name`, with ImageNet weights or a local weights file if asked.

    Raises:
        DermasegError: unknown name, bad option, no network for `pretrained`, unreadable or
            unfitting weights file.
    """
    _spec(name)
    if pretrained not in (None, "imagenet", "none", ""):
        raise DermasegError(f"model.pretrained: must be null or 'imagenet', got {pretrained!r}")
    want_hub = pretrained == "imagenet"
    if want_hub and weights:
        raise DermasegError("model.pretrained and model.weights are both set; choose one")
    if want_hub and not _hub_cached(name):
        _check_hub_reachable(name)
    try:
        backbone = Backbone(name, output_stride=output_stride, pretrained=want_hub)
    except DermasegError:
        raise
    except Exception as exc:  # timm/hub errors: network, HTTP, corrupt download
        if not want_hub:
            raise
        raise DermasegError(_offline_message(name, f"{type(exc).__name__}: {exc}")) from exc
    if weights:
        load_backbone_weights(backbone, weights)
    return backbone


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch state dict, without unpickling code.

    Raises:
        DermasegError: missing file, unreadable, or holding pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise DermasegError(f"model.weights: no such file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DermasegError(
            f"model.weights {path}: refused: holds objects other than tensors "
            f"(loading it could run code)"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise DermasegError(f"model.weights {path}: not a readable weights file ({exc})") from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DermasegError(f"model.weights {path}: not a state dict of tensors")
    return data


def load_backbone_weights(backbone: Backbone, path: str | os.PathLike) -> None:
    """Load a local weights file into `backbone` (see module docstring for accepted layouts).

    Keys the backbone does not have (a classifier head, a dermaseg head) are ignored with a
    warning that names them; any backbone key the file lacks is an error.

    Raises:
        DermasegError: the file is unreadable, or lacks some backbone weights, or shapes differ.
    """
    state = _strip_prefixes(read_state_dict(path))
    own = backbone.body.state_dict()
    known = set(own)
    loaded, unexpected = {}, []
    for key, value in state.items():
        target = key if key in known else re.sub(r"^([A-Za-z_]\w*)\.(\d+)\.", r"\1_\2.", key)
        if target in known:
            loaded[target] = value
        else:
            unexpected.append(key)
    missing = sorted(k for k in known - set(loaded) if not k.endswith("num_batches_tracked"))
    if missing:
        raise DermasegError(
            f"model.weights {path}: {len(missing)} of {len(known)} {backbone.name} weights "
            f"missing from the file (e.g. {', '.join(missing[:5])}); is it a {backbone.name} file?"
        )
    bad = [k for k, v in loaded.items() if v.shape != own[k].shape]
    if bad:
        raise DermasegError(
            f"model.weights {path}: shape mismatch for {len(bad)} weights, e.g. {bad[0]}: "
            f"file {tuple(loaded[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}"
        )
    if unexpected:
        warnings.warn(
            f"model.weights {path}: ignored {len(unexpected)} keys not in the {backbone.name} "
            f"backbone (e.g. {', '.join(unexpected[:5])})", stacklevel=2,
        )
    backbone.body.load_state_dict(loaded, strict=False)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept Lightning (`model.`), dermaseg model (`backbone.body.`) and backbone (`body.`).

    A Lightning checkpoint also holds other modules' state (`train_loss_avg.`): only the
    `model.` keys are kept from one.
    """
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    for prefix in ("backbone.body.", "body."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return state
