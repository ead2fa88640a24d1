"""Model options beyond the shared matrix: sizes, config errors, ASPP rates, freezing, weights,
ImageNet download without network, channels_last, bf16 autocast, torch.compile, ONNX export."""

from __future__ import annotations

import socket
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from dermaseg.config import ModelConfig
from dermaseg.config_io import load_config
from dermaseg.errors import DermasegError
from dermaseg.models import BACKBONES, build_model


def tiny(**kwargs) -> ModelConfig:
    """A resnet18 model with a narrow head: same code paths, little compute."""
    base = {"backbone": "resnet18", "aspp_channels": 32, "decoder_channels": 32}
    return ModelConfig(**{**base, **kwargs})


def _built(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_model(tiny(**kwargs))


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_full_resolution_at_real_sizes_batch_one(arch):
    model = _built(arch=arch, attention="scse", edge_head=True).eval()
    with torch.no_grad():
        for h, w in ((384, 512), (321, 481), (256, 256)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 1, h, w)


def test_xception65_dilated_output_and_stage_freezing():
    model = _built(backbone="xception65", arch="deeplabv3plus", freeze_stages=3).eval()
    assert model.backbone.reductions == [2, 4, 8, 16, 16]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 1, 65, 97)
    body = model.backbone.body  # timm's FeatureHookNet renames blocks.N to blocks_N
    assert not body.blocks_2.stack.conv1.conv_dw.weight.requires_grad
    assert body.blocks_3.stack.conv1.conv_dw.weight.requires_grad


def test_batch_of_one_trains():
    model = _built(arch="deeplabv3plus", edge_head=True).train()
    out = model(torch.randn(1, 3, 64, 64))
    (out["mask"].mean() + out["edge"].mean()).backward()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("backbone", "resnet5O", ["resnet5O", *BACKBONES]),
        ("arch", "unet", ["model.arch", "deeplabv3plus"]),
        ("output_stride", 32, ["model.output_stride", "8 or 16"]),
        ("attention", "cbam", ["model.attention", "scse"]),
        ("atrous_rates", [6, 12], ["model.atrous_rates", "three"]),
        ("atrous_rates", [], ["model.atrous_rates", "three"]),  # not the defaults
        ("pretrained", "imagenet21k", ["model.pretrained", "imagenet"]),
    ],
)
def test_bad_config_names_the_field(field, value, words):
    with pytest.raises(DermasegError) as info:
        build_model(tiny(**{field: value}))
    assert all(word in str(info.value) for word in words)


@pytest.mark.parametrize(("stride", "rates", "expected"), [
    (16, None, (6, 12, 18)), (8, None, (12, 24, 36)), (16, [3, 6, 9], (3, 6, 9)),
])
def test_atrous_rates_and_output_stride(stride, rates, expected):
    model = _built(output_stride=stride, atrous_rates=rates)
    dilations = [m.dilation[0] for m in model.head.aspp.branches[1:4].modules()
                 if isinstance(m, torch.nn.Conv2d)]
    assert tuple(dilations) == expected
    features = model.backbone(torch.randn(1, 3, 64, 96))
    assert features[-1].shape[-2:] == (64 // stride, 96 // stride)
    assert model.backbone.reductions[-1] == stride


@pytest.mark.parametrize("recipe", ["deeplabv3_resnet50_isic", "deeplabv3plus_resnet50_isic"])
def test_shipped_recipes_double_the_rates_at_output_stride_8(recipe):
    small = ["model.backbone=resnet18", "model.pretrained=null", "model.aspp_channels=8",
             "model.decoder_channels=8"]
    for stride, rates in ((16, (6, 12, 18)), (8, (12, 24, 36))):
        config = load_config(recipe, [*small, f"model.output_stride={stride}"])
        assert build_model(config.model).head.aspp.rates == rates


def test_freeze_at_build_time_and_unfreeze():
    model = _built(freeze_stages=-1)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(m.training for m in model.head.modules())
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in bns)
    model.eval()
    assert not any(m.training for m in bns)

    partial = _built(freeze_stages=2)
    stem = partial.backbone.body.conv1.weight
    assert not stem.requires_grad and partial.backbone.body.layer2[0].conv1.weight.requires_grad


def test_param_groups_cover_every_parameter_once():
    model = _built(arch="deeplabv3plus", edge_head=True)
    groups = model.param_groups()
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [g["name"] for g in groups] == ["backbone", "head"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_backbone_weights_round_trip(tmp_path, suffix):
    source = _built(seed=1, arch="deeplabv3plus").eval()
    path = tmp_path / f"backbone{suffix}"
    state = {k: v.contiguous() for k, v in source.backbone.body.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    target = _built(seed=2, arch="deeplabv3plus", weights=str(path)).eval()
    target.head.load_state_dict(source.head.state_dict())
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_weights_from_a_timm_classifier_file_and_a_model_checkpoint(tmp_path):
    classifier = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18.safetensors"
    save_file(classifier.state_dict(), path)
    with pytest.warns(UserWarning, match="ignored 2 keys.*fc.weight"):
        model = _built(weights=str(path))
    body = model.backbone.body
    assert torch.equal(body.layer3[1].conv2.weight, classifier.layer3[1].conv2.weight)

    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    again = _built(seed=3, weights=str(checkpoint))
    assert torch.equal(again.backbone.body.conv1.weight, classifier.conv1.weight)


def test_weights_file_errors(tmp_path):
    partial = tmp_path / "partial.safetensors"
    state = timm.create_model("resnet18").state_dict()
    save_file({k: v for k, v in state.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(DermasegError, match=r"partial.safetensors.*missing.*layer4"):
        build_model(tiny(weights=str(partial)))
    with pytest.raises(DermasegError, match="no such file"):
        build_model(tiny(weights=str(tmp_path / "nope.pt")))
    pickled = tmp_path / "code.pt"
    torch.save({"conv1.weight": torch.zeros(1), "obj": socket.AddressFamily}, pickled)
    with pytest.raises(DermasegError, match="refused"):
        build_model(tiny(weights=str(pickled)))
    wrong = tmp_path / "mobilenet.safetensors"
    save_file(timm.create_model("mobilenetv3_large_100").state_dict(), wrong)
    with pytest.raises(DermasegError, match="is it a resnet18 file"):
        build_model(tiny(weights=str(wrong)))


def test_imagenet_without_network_fails_fast_naming_the_file(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(DermasegError) as info:
        build_model(tiny(pretrained="imagenet"))
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "timm/resnet18" in message and "model.safetensors" in message
    assert "model.weights" in message
    with pytest.raises(DermasegError, match="both set"):
        build_model(tiny(pretrained="imagenet", weights=str(tmp_path / "w.safetensors")))


def test_channels_last_and_bf16_autocast():
    model = _built(arch="deeplabv3plus", attention="scse").eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        fast = model_cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model_cl(x)
    assert half.shape == reference.shape and torch.isfinite(half).all()
    agreement = torch.corrcoef(torch.stack([half.float().flatten(), reference.flatten()]))[0, 1]
    assert agreement > 0.95


def test_torch_compile_without_graph_breaks():
    model = _built(arch="deeplabv3plus", edge_head=True).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    x = torch.randn(2, 3, 64, 64)
    out = compiled(x)
    (out["mask"].mean() + out["edge"].mean()).backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_torch_compile_inductor():
    model = _built(backbone="mobilenetv3_large_100", arch="deeplabv3plus").eval()
    compiled = torch.compile(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
