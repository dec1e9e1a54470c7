"""ResNet-18 encoder variant (paper 001 Fig. 12, Table IX; thesis 7.4.1).

Parameter names follow torchvision's ``resnet18`` (conv1, bn1, layer1..layer3), so ImageNet
weights load from a local ``.pth`` file without torchvision installed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.network.blocks import DoubleConv, Up

TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs and an identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _layer(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels))


class ResNet18Encoder(nn.Module):
    """Stem and layer1..layer3 of ResNet-18, plus a DoubleConv(256, 256) in the bottleneck.

    Features: stem (1/2, 64 ch), layer1 (1/4, 64), layer2 (1/8, 128), bottleneck (1/16, 256).
    """

    def __init__(self, in_channels: int = 3, dropout: float = 0.0, frozen: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.bottleneck = DoubleConv(256, 256, dropout)
        self.frozen = frozen
        if frozen:
            for parameter in self.trunk_parameters():
                parameter.requires_grad_(False)

    def trunk_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]

    def trunk_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.trunk_modules() for p in module.parameters()]

    def train(self, mode: bool = True) -> ResNet18Encoder:
        """A frozen trunk keeps its ImageNet BatchNorm statistics even while the rest trains."""
        super().train(mode)
        if self.frozen:
            for module in self.trunk_modules():
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(stem))
        x2 = self.layer2(x1)
        return [stem, x1, x2, self.bottleneck(self.layer3(x2))]


class ResNet18Decoder(nn.Module):
    """Up(256+128->128), Up(128+64->64), Up(64+64->64), ConvT 64->32, DoubleConv(32, 32), 1x1 conv."""

    def __init__(self, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up1 = Up(256, 128, 128, dropout)
        self.up2 = Up(128, 64, 64, dropout)
        self.up3 = Up(64, 64, 64, dropout)
        self.up4 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.conv = DoubleConv(32, 32, dropout)
        self.outc = nn.Conv2d(32, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        stem, x1, x2, bottleneck = features
        x = self.up3(self.up2(self.up1(bottleneck, x2), x1), stem)
        return self.outc(self.conv(self.up4(x)))


class PretrainedWeightsError(DDUNetError):
    """A pretrained ResNet-18 file that cannot initialise the trunk."""


def load_resnet18_trunk(encoder: ResNet18Encoder, path: str | Path) -> list[str]:
    """Copy conv1/bn1/layer1..3 from a torchvision-style ``resnet18`` state dict file.

    Returns the names loaded. Only tensors are read (``weights_only=True``); nothing is downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} does not hold a state dict")
    trunk = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    own = {k: v for k, v in encoder.state_dict().items() if k.startswith(TRUNK_PREFIXES)}
    missing = sorted(set(own) - set(trunk))
    if missing:
        raise PretrainedWeightsError(
            f"{path} is not a resnet18 state dict: {len(missing)} trunk tensors missing, e.g. {missing[0]}"
        )
    for name, tensor in trunk.items():
        if name in own and own[name].shape != tensor.shape:
            raise PretrainedWeightsError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the encoder needs {tuple(own[name].shape)}"
            )
    encoder.load_state_dict({k: v for k, v in trunk.items() if k in own}, strict=False)
    return sorted(own)
