"""The U-Net subnetwork: encoder to the bottleneck, decoder back to class logits."""

from __future__ import annotations

import torch
from torch import nn

from napari_ddunet.core.network.blocks import DoubleConv, Down, Up


class UNetEncoder(nn.Module):
    """Level i has base * 2**i channels at 1 / 2**i resolution, i = 0..depth."""

    def __init__(self, in_channels: int, base_channels: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0], dropout)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], dropout) for i in range(depth))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.inc(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class UNetDecoder(nn.Module):
    """Mirror of the encoder; consumes its feature list (bottleneck last) and returns logits."""

    def __init__(self, base_channels: int, depth: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], dropout) for i in reversed(range(depth))
        )
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
        return self.outc(x)
