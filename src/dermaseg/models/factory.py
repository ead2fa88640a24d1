"""`build_model(config)`: a ModelConfig -> a DeepLab-v3 / v3+ network returning mask logits.

The network (`DeepLab`) = `backbone` (timm feature extractor, dilated to output stride 16|8)
+ `head` (DeepLab-v3 ASPP head or the v3+ decoder, optional scSE attention) + optional `edge`
(auxiliary boundary head). It returns logits at the input's full resolution, no sigmoid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dermaseg.errors import DermasegError
from dermaseg.models.aspp import default_rates
from dermaseg.models.backbones import Backbone, create_backbone
from dermaseg.models.heads import DeepLabV3Head, DeepLabV3PlusHead, EdgeHead, resize

if TYPE_CHECKING:
    from dermaseg.config import ModelConfig

ARCHS = ("deeplabv3", "deeplabv3plus")


class DeepLab(nn.Module):
    """(N, 3, H, W) float -> mask logits (N, 1, H, W), for any H, W.

    With an edge head, training mode returns {"mask": (N,1,H,W), "edge": (N,1,H,W)} logits; eval
    mode returns the mask logits only, unless `return_edge` is set to True.
    """

    def __init__(self, backbone: Backbone, head: DeepLabV3Head | DeepLabV3PlusHead,
                 edge: EdgeHead | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.edge = edge
        self.return_edge = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        decoded = self.head.decode(features)
        mask = resize(self.head.classifier(decoded), size)
        if self.edge is None or not (self.training or self.return_edge):
            return mask
        return {"mask": mask, "edge": resize(self.edge(features, decoded), size)}

    def freeze_backbone(self, stages: int | None = None) -> None:
        """Freeze the first `stages` backbone stages (of 5); None or -1: the whole backbone.

        Frozen BatchNorm layers stay in eval mode through later `.train()` calls.
        """
        self.backbone.freeze(stages)

    def unfreeze_backbone(self) -> None:
        self.backbone.unfreeze()

    def param_groups(self) -> list[dict[str, Any]]:
        """[{"name": "backbone", "params"}, {"name": "head", "params"}] for per-part LRs.

        Frozen parameters are included (they have no gradient, so optimisers skip them), so
        unfreezing later needs no new optimiser.
        """
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"name": "backbone", "params": backbone}, {"name": "head", "params": rest}]


def build_model(config: ModelConfig) -> DeepLab:
    """Build the network a ModelConfig describes (weights loaded, stages frozen as asked).

    Raises:
        DermasegError: unknown arch/backbone/attention, bad output stride or rates, no network
            for ImageNet weights, unreadable or unfitting weights file.
    """
    if config.arch not in ARCHS:
        raise DermasegError(f"model.arch: must be one of {', '.join(ARCHS)}, got {config.arch!r}")
    rates = tuple(config.atrous_rates if config.atrous_rates is not None
                  else default_rates(config.output_stride))
    backbone = create_backbone(
        config.backbone, output_stride=config.output_stride, pretrained=config.pretrained,
        weights=config.weights,
    )
    low_index = backbone.reductions.index(4)
    common = {"rates": rates, "channels": config.aspp_channels, "dropout": config.aspp_dropout,
              "attention": config.attention}
    if config.arch == "deeplabv3":
        head = DeepLabV3Head(backbone.channels[-1], **common)
    else:
        head = DeepLabV3PlusHead(
            backbone.channels[-1], backbone.channels[low_index], low_index=low_index,
            decoder_channels=config.decoder_channels, **common,
        )
    edge = None
    if config.edge_head:
        edge = EdgeHead(backbone.channels[low_index], head.out_channels, low_index=low_index)
    model = DeepLab(backbone, head, edge)
    if config.freeze_stages:
        model.freeze_backbone(config.freeze_stages)
    return model
