"""Audit regressions: stage freezing follows the data flow, the hub check honours a proxy."""

from __future__ import annotations

import socket

import pytest
import torch

from dermaseg.errors import DermasegError
from dermaseg.models import backbones
from dermaseg.models.backbones import Backbone

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _params_behind_each_feature(backbone: Backbone) -> list[set[str]]:
    """For each of the 5 feature maps, the parameters it is computed from (autograd graph)."""
    names, params = zip(*backbone.named_parameters(), strict=True)
    features = backbone(torch.randn(2, 3, 32, 32))
    used = []
    for feature in features:
        grads = torch.autograd.grad(feature.sum(), params, allow_unused=True, retain_graph=True)
        used.append({n for n, g in zip(names, grads, strict=True) if g is not None})
    return used


@pytest.mark.parametrize("name", ["resnet18", "xception65"])
def test_freezing_k_stages_freezes_exactly_what_feeds_feature_k(name):
    # timm's Xception registers each block's strided shortcut before the block's feature point
    # but runs it after: it belongs to the next stage, which must stay trainable.
    torch.manual_seed(0)
    backbone = Backbone(name)
    used = _params_behind_each_feature(backbone)
    for stages in range(1, 5):
        backbone.freeze(stages)
        frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
        assert frozen == set().union(*used[:stages]), f"freeze({stages})"
        backbone.train()
        trained_bn = [m for n, m in backbone.named_modules() if n + ".weight" not in frozen
                      and isinstance(m, torch.nn.BatchNorm2d)]
        assert trained_bn and all(m.training for m in trained_bn)


def _listening_port() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server, server.getsockname()[1]


def _clear_proxies(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


def test_hub_check_goes_through_the_configured_proxy(monkeypatch):
    # Behind a proxy the hub's own name may not resolve, yet downloads work through the proxy.
    _clear_proxies(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    with pytest.raises(DermasegError, match="hub.invalid"):
        backbones._check_hub_reachable("resnet18")
    server, port = _listening_port()
    with server:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        backbones._check_hub_reachable("resnet18")  # reaches the proxy: no error
        monkeypatch.setenv("NO_PROXY", "hub.invalid")  # bypassed: direct again, fails
        with pytest.raises(DermasegError, match="hub.invalid"):
            backbones._check_hub_reachable("resnet18")


def test_hub_check_names_an_unreachable_proxy(monkeypatch):
    _clear_proxies(monkeypatch)
    server, port = _listening_port()
    server.close()  # nobody listens there any more
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    with pytest.raises(DermasegError, match=f"proxy 127.0.0.1:{port} unreachable"):
        backbones._check_hub_reachable("resnet18")


@pytest.mark.parametrize("backbone, expected", [("xception65", 0.5), ("resnet50", 0.485)])
def test_default_normalisation_is_what_the_backbone_weights_expect(backbone, expected):
    """timm's Xception-65 weights were trained on images scaled to [-1, 1] (mean = std = 0.5);
    feeding them ImageNet-normalised inputs shifts every activation."""
    from dermaseg.config_io import load_config
    from dermaseg.models.backbones import create_backbone

    config = load_config(None, [f"model.backbone={backbone}"])
    assert config.data.mean[0] == expected
    assert tuple(config.data.mean) == create_backbone(backbone).mean
    assert tuple(config.data.std) == create_backbone(backbone).std
    chosen = load_config(None, [f"model.backbone={backbone}", "data.mean=[0.1,0.2,0.3]"])
    assert chosen.data.mean == [0.1, 0.2, 0.3] and chosen.data.std == config.data.std
