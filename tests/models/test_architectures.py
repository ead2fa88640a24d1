"""One shared test base run across every backbone x architecture x option (smp style).

The fast suite runs the small backbones on the whole matrix and the big ones (ResNet-50/101,
Xception-65) on a few variants; `-m slow` runs the rest of the matrix.
"""

from __future__ import annotations

import pytest
import torch

from dermaseg.config import ModelConfig
from dermaseg.models import BACKBONES, build_model

BACKBONE_ORDER = ("resnet18", "mobilenetv3_large_100", "efficientnet_b0",
                  "resnet50", "resnet101", "xception65")
ARCHS = ("deeplabv3", "deeplabv3plus")
OPTIONS = {"plain": {}, "attention": {"attention": "scse"}, "edge": {"edge_head": True}}
# The fast suite: every variant of resnet18, one of mobilenet, efficientnet and resnet50; the
# rest under -m slow (test_models_extras checks xception65's output and freezing quickly).
FAST = {
    ("mobilenetv3_large_100", "deeplabv3plus", "attention"),
    ("efficientnet_b0", "deeplabv3", "edge"),
    ("resnet50", "deeplabv3", "plain"),
}
SIZES = ((64, 80), (65, 97))


def _variants():
    assert set(BACKBONE_ORDER) == set(BACKBONES)
    for backbone in BACKBONE_ORDER:
        for arch in ARCHS:
            for option in OPTIONS:
                fast = backbone == "resnet18" or (backbone, arch, option) in FAST
                yield pytest.param(
                    (backbone, arch, option), id=f"{backbone}-{arch}-{option}",
                    marks=() if fast else pytest.mark.slow,
                )


@pytest.fixture(params=list(_variants()))
def config(request) -> ModelConfig:
    backbone, arch, option = request.param
    # Narrow ASPP/decoder (same code paths, a tenth of the compute) keeps the matrix fast.
    return ModelConfig(arch=arch, backbone=backbone, aspp_channels=32, decoder_channels=32,
                       **OPTIONS[option])


def _build(config: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config)


def _loss(out) -> torch.Tensor:
    if isinstance(out, dict):
        return out["mask"].float().square().mean() + out["edge"].float().square().mean()
    return out.float().square().mean()


class TestEveryVariant:
    def test_output_is_full_resolution_logits(self, config):
        model = _build(config).train()
        for h, w in SIZES:
            out = model(torch.randn(2, 3, h, w))
            if config.edge_head:
                assert set(out) == {"mask", "edge"}
                assert out["edge"].shape == (2, 1, h, w)
                out = out["mask"]
            assert out.shape == (2, 1, h, w) and out.dtype == torch.float32
        model.eval()
        with torch.no_grad():
            for h, w in SIZES:
                out = model(torch.randn(1, 3, h, w))
                assert isinstance(out, torch.Tensor) and out.shape == (1, 1, h, w)
                assert torch.isfinite(out).all()

    def test_gradients_reach_every_trainable_parameter(self, config):
        model = _build(config).train()
        _loss(model(torch.randn(2, 3, *SIZES[1]))).backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"no gradient for {no_grad[:5]}"
        # timm zero-initialises the last BN of residual blocks, so only the head (and the stem,
        # which every path crosses) must have non-zero gradients at initialisation.
        zero = [n for n, p in model.named_parameters()
                if not n.startswith("backbone.") and not p.grad.abs().sum() > 0]
        assert not zero, f"all-zero gradient for {zero[:5]}"
        stem = next(iter(model.backbone.parameters()))
        assert stem.grad.abs().sum() > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    def test_frozen_parameters_do_not_change(self, config):
        model = _build(config)
        model.freeze_backbone(2)
        model.train()
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and all(n.startswith("backbone.") for n in frozen)
        bns = {n: m for n, m in model.backbone.named_modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        frozen_bn = {n for n, m in bns.items() if not m.weight.requires_grad}
        assert frozen_bn and all(not bns[n].training for n in frozen_bn)
        stats = {n: m.running_mean.clone() for n, m in bns.items()}
        head = {n: p.detach().clone() for n, p in model.head.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        _loss(model(torch.randn(2, 3, *SIZES[0]))).backward()
        optimizer.step()
        after = dict(model.named_parameters())
        assert all(torch.equal(after[n], v) for n, v in frozen.items())
        changed = [n for n, v in head.items() if not torch.equal(after[f"head.{n}"], v)]
        assert len(changed) == len(head)
        # BatchNorm statistics of frozen stages stay put; those of trainable stages move.
        kept = {n for n, v in stats.items() if torch.equal(bns[n].running_mean, v)}
        assert kept == frozen_bn

    def test_eval_output_is_deterministic(self, config):
        model = _build(config).eval()
        x = torch.randn(1, 3, *SIZES[1])
        with torch.no_grad():
            first, second = model(x), model(x)
        assert torch.equal(first, second)
        if config.edge_head:
            model.return_edge = True
            with torch.no_grad():
                both = model(x)
            assert torch.equal(both["mask"], first) and both["edge"].shape == first.shape
