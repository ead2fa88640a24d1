"""Segmentation heads: DeepLab-v3, the DeepLab-v3+ decoder, scSE attention, the edge branch.

Every head takes the backbone's feature list and gives one logit map at the resolution of the
map it decodes (stride 16|8 for v3, stride 4 for v3+); the model upsamples it to the input size.
`decode(features)` returns the features just before the 1x1 classifier (used by the edge head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dermaseg.errors import DermasegError
from dermaseg.models.aspp import ASPP, conv_bn_relu


def resize(x: torch.Tensor, size: Sequence[int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to (N, C, *size), align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation (Roy et al. 2018).

    Re-weights channels (cSE: global pool -> bottleneck MLP -> sigmoid) and pixels (sSE: 1x1
    conv -> sigmoid) and adds both: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.cse = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )
        self.sse = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)


def make_attention(kind: str | None, channels: int) -> nn.Module:
    """`None` -> identity, `"scse"` -> SCSE(channels)."""
    if kind is None:
        return nn.Identity()
    if kind == "scse":
        return SCSE(channels)
    raise DermasegError(f"model.attention: must be null or 'scse', got {kind!r}")


class DeepLabV3Head(nn.Module):
    """ASPP on the last map, optional attention, 1x1 classifier (the paper's Sec. 3.3 head).

    features[-1] (N, C, H/s, W/s) -> logits (N, 1, H/s, W/s).
    """

    def __init__(self, in_channels: int, *, rates: Sequence[int], channels: int = 256,
                 dropout: float = 0.1, attention: str | None = None) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, rates=rates, channels=channels, dropout=dropout)
        self.attention = make_attention(attention, channels)
        self.classifier = nn.Conv2d(channels, 1, 1)
        self.out_channels = channels

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.attention(self.aspp(features[-1]))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.decode(features))


class DeepLabV3PlusHead(nn.Module):
    """DeepLab-v3+ decoder (Chen et al. 2018): ASPP output upsampled to stride 4, joined with the
    stride-4 backbone map projected to 48 channels, refined by two 3x3 convs.

    features[low_index] (N, C_low, H/4, W/4), features[-1] -> logits (N, 1, H/4, W/4).
    Attention (if any) follows the ASPP and the decoder convs.
    """

    def __init__(self, in_channels: int, low_channels: int, *, low_index: int,
                 rates: Sequence[int], channels: int = 256, decoder_channels: int = 256,
                 dropout: float = 0.1, attention: str | None = None, low_project: int = 48) -> None:
        super().__init__()
        self.low_index = low_index
        self.aspp = ASPP(in_channels, rates=rates, channels=channels, dropout=dropout)
        self.aspp_attention = make_attention(attention, channels)
        self.low_project = conv_bn_relu(low_channels, low_project, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(channels + low_project, decoder_channels, 3),
            conv_bn_relu(decoder_channels, decoder_channels, 3),
        )
        self.attention = make_attention(attention, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, 1, 1)
        self.out_channels = decoder_channels

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low_project(features[self.low_index])
        high = resize(self.aspp_attention(self.aspp(features[-1])), low.shape[-2:])
        return self.attention(self.fuse(torch.cat([high, low], dim=1)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.decode(features))


class EdgeHead(nn.Module):
    """Auxiliary boundary branch: predicts a thin band around the lesion contour.

    Joins the stride-4 backbone map (fine detail) with the head's decoded features (what is
    lesion) and gives one edge logit map at stride 4: (N, 1, H/4, W/4). It is trained with a
    boundary loss so the shared features learn where the border is; it is not run at inference
    unless asked.
    """

    def __init__(self, low_channels: int, head_channels: int, *, low_index: int,
                 width: int = 64) -> None:
        super().__init__()
        self.low_index = low_index
        self.low = conv_bn_relu(low_channels, width // 2, 1)
        self.high = conv_bn_relu(head_channels, width // 2, 1)
        self.fuse = conv_bn_relu(width, width, 3)
        self.classifier = nn.Conv2d(width, 1, 1)

    def forward(self, features: list[torch.Tensor], decoded: torch.Tensor) -> torch.Tensor:
        low = self.low(features[self.low_index])
        high = resize(self.high(decoded), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([low, high], dim=1)))
