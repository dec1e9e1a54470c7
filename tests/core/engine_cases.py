"""Shared cases for the engine tests: a tiny float64 DDU-Net, test images and the monolithic reference."""

from __future__ import annotations

import numpy as np
import torch

from napari_ddunet import DDUNet, ModelConfig
from napari_ddunet.core.inference.grid import pad_to_grid, plan_grid

SUB = (16, 24)
SHAPE = (75, 161)   # 5 x 7 subdomains, the last row and column padded


def tiny_model(seed: int = 0, **changes) -> DDUNet:
    """Depth 2, F=4, three 5x5 comm layers (halo 6 bottleneck px = 2 subdomain rows of 4 px)."""
    values = {"in_channels": 1, "num_classes": 3, "depth": 2, "base_channels": 2, "comm_features": 4,
              "dropout": 0.0}
    values.update(changes)
    torch.manual_seed(seed)
    model = DDUNet(ModelConfig(**values)).double().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator, dtype=torch.float64))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator, dtype=torch.float64))
    return model


def image(shape=SHAPE, channels: int | None = None, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if channels is None:
        return rng.normal(size=shape)
    return rng.normal(size=(*shape, channels))


def reference(model: DDUNet, img: np.ndarray, mean=None, std=None, communicate=None) -> dict[str, np.ndarray]:
    """The monolithic forward on the reflect-padded, normalised image, cropped back."""
    chw = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
    chw = chw[: model.config.in_channels]
    if mean is not None:
        chw = (chw - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    plan = plan_grid(img.shape[:2], SUB, model.config.downsampling)
    x = torch.from_numpy(pad_to_grid(chw, plan))[None]
    net = model
    if communicate is False:
        net = DDUNet(model.config.replace(communicate=False)).double().eval()
        net.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = net.forward_features(x, plan.grid)
    bh, bw = -(-img.shape[0] // 4), -(-img.shape[1] // 4)
    return {"logits": out["logits"][0, :, : img.shape[0], : img.shape[1]].numpy(),
            "padded_labels": out["logits"][0].argmax(0).numpy(),
            "bottleneck": out["bottleneck"][0, :, :bh, :bw].numpy(),
            "communicated": out["communicated"][0, :, :bh, :bw].numpy()}
