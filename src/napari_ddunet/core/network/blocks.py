"""Building blocks shared by the U-Net and ResNet-18 subnetworks (paper 001, Fig. 3)."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """Two [3x3 conv (no bias) -> BatchNorm -> ReLU -> Dropout2d] layers; size-preserving."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
        super().__init__(*layers)


class Down(nn.Sequential):
    """Halve the resolution, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, dropout))


class Up(nn.Module):
    """2x transposed conv to half the channels, concatenate [skip, up], DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class CommunicationNetwork(nn.Sequential):
    """F -> F channel [kxk conv (same padding, bias) -> BatchNorm -> ReLU -> Dropout2d] x layers."""

    def __init__(self, features: int, layers: int, kernel: int, dilation: int = 1, dropout: float = 0.0) -> None:
        modules: list[nn.Module] = []
        for _ in range(layers):
            modules += [
                nn.Conv2d(features, features, kernel, padding=dilation * (kernel // 2), dilation=dilation),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
        super().__init__(*modules)
