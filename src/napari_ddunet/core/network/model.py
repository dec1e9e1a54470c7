"""DDU-Net: a shared subnetwork over non-overlapping subdomains, coupled at the bottleneck.

Subdomains travel as the batch dimension through one encoder/decoder instance. The last F
bottleneck channels of all subdomains are stitched into one mosaic in their image positions,
passed through the communication network, and put back (paper 001, sec. III-A).
"""

from __future__ import annotations

import torch
from torch import nn

from napari_ddunet.core.network.blocks import CommunicationNetwork
from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.mosaic import Grid, from_subdomains, to_subdomains
from napari_ddunet.core.network.resnet import ResNet18Decoder, ResNet18Encoder
from napari_ddunet.core.network.unet import UNetDecoder, UNetEncoder


class DDUNet(nn.Module):
    """``model(x, grid=(rows, cols))`` maps (B, C, H, W) images to (B, K, H, W) logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.encoder == "resnet18":
            self.encoder: nn.Module = ResNet18Encoder(config.in_channels, config.dropout, config.freeze_encoder)
            self.decoder: nn.Module = ResNet18Decoder(config.num_classes, config.dropout)
        else:
            self.encoder = UNetEncoder(config.in_channels, config.base_channels, config.depth, config.dropout)
            self.decoder = UNetDecoder(config.base_channels, config.depth, config.num_classes, config.dropout)
        self.comm: CommunicationNetwork | None = None
        if config.comm_features > 0:
            self.comm = CommunicationNetwork(
                config.comm_features, config.comm_layers, config.comm_kernel, config.comm_dilation, config.dropout
            )
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation (paper 001, sec. III-C) for every conv the model owns."""
        for module in self.modules():
            # a shape-only model on the meta device (the checkpoint reader's) has no values to draw
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and not module.weight.is_meta:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- the three stages, used by the engine and by the distributed code --------------

    def encode(self, tiles: torch.Tensor) -> list[torch.Tensor]:
        """Subdomain batch -> skip features, bottleneck last."""
        return self.encoder(tiles)

    def split_bottleneck(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept channels, last F channels that the communication network sees)."""
        f = self.config.comm_features
        split = bottleneck.shape[1] - f
        return bottleneck[:, :split], bottleneck[:, split:]

    def communicate(self, bottleneck: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Replace the last F channels by the communication network's output."""
        if self.comm is None:
            return bottleneck
        kept, sent = self.split_bottleneck(bottleneck)
        if self.config.communicate:
            received = to_subdomains(self.comm(from_subdomains(sent, grid)), grid)
        else:
            received = self.comm(sent)
        return torch.cat([kept, received], dim=1)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Skip features with a (communicated) bottleneck last -> subdomain logits."""
        return self.decoder(features)

    # -- whole-image entry points ---------------------------------------------------------

    def check_input(self, x: torch.Tensor, grid: Grid) -> None:
        rows, cols = grid
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a (B, {self.config.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        step = self.config.downsampling
        height, width = x.shape[-2:]
        if height % rows or width % cols or (height // rows) % step or (width // cols) % step:
            raise ValueError(
                f"a {height}x{width} image on a {rows}x{cols} grid needs subdomain sides that are "
                f"multiples of {step} (2**depth)"
            )

    def forward_features(self, x: torch.Tensor, grid: Grid = (1, 1)) -> dict[str, torch.Tensor]:
        """Logits plus the F-channel bottleneck mosaics before and after communication."""
        self.check_input(x, grid)
        features = self.encode(to_subdomains(x, grid))
        before = features[-1]
        after = self.communicate(before, grid)
        logits = from_subdomains(self.decode([*features[:-1], after]), grid)
        f = self.config.comm_features
        return {
            "bottleneck": from_subdomains(before[:, before.shape[1] - f:], grid),
            "communicated": from_subdomains(after[:, after.shape[1] - f:], grid),
            "logits": logits,
        }

    def forward(self, x: torch.Tensor, grid: Grid = (1, 1)) -> torch.Tensor:
        self.check_input(x, grid)
        features = self.encode(to_subdomains(x, grid))
        features[-1] = self.communicate(features[-1], grid)
        return from_subdomains(self.decode(features), grid)
