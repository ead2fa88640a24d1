"""Atrous Spatial Pyramid Pooling (Chen et al. 2017, "Rethinking Atrous Convolution", Sec. 3.3).

Five parallel branches on the last backbone map: a 1x1 conv, three 3x3 convs with atrous rates
(6, 12, 18 at output stride 16; doubled at 8) and image pooling; each gives `channels` maps with
BatchNorm + ReLU. They are concatenated and projected by a 1x1 conv (+ BN, ReLU, dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dermaseg.errors import DermasegError

DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def default_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's atrous rates for an output stride of 16 or 8."""
    if output_stride not in DEFAULT_RATES:
        raise DermasegError(f"model.output_stride: must be 8 or 16, got {output_stride}")
    return DEFAULT_RATES[output_stride]


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm + ReLU: (N, cin, H, W) -> (N, cout, H, W)."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """Global average -> 1x1 conv -> ReLU, broadcast back: (N, C, H, W) -> (N, out, H, W).

    No BatchNorm here (unlike torchvision): with one 1x1 value per channel and sample, BatchNorm
    fails for a training batch of 1, and a bias does the same job.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """(N, in_channels, H, W) -> (N, channels, H, W).

    Args:
        in_channels: channels of the backbone's last map.
        rates: the three atrous rates of the 3x3 branches.
        channels: width of every branch and of the output (256 in the paper).
        dropout: dropout after the projection.

    Raises:
        DermasegError: when `rates` is not three positive integers.
    """

    def __init__(self, in_channels: int, *, rates: Sequence[int] = (6, 12, 18),
                 channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        rates = tuple(rates)
        if len(rates) != 3 or any(int(r) != r or r < 1 for r in rates):
            raise DermasegError(f"model.atrous_rates: need three positive integers, got {rates}")
        branches: list[nn.Module] = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv_bn_relu(in_channels, channels, 3, int(r)) for r in rates]
        branches.append(ImagePooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            conv_bn_relu(len(branches) * channels, channels, 1), nn.Dropout(dropout)
        )
        self.rates = rates
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
