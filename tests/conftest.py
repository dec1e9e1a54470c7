"""Shared fixtures: tiny float64 models for exactness tests, tiny image/mask datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ddunet import DDUNet, ModelConfig


@pytest.fixture
def make_model():
    """``make_model(**config)`` -> a seeded float64 DDU-Net in eval mode (tiny unless told otherwise)."""

    def make(seed: int = 0, **changes) -> DDUNet:
        values = {"in_channels": 1, "num_classes": 3, "depth": 2, "base_channels": 2, "comm_features": 4,
                  "comm_layers": 2, "comm_kernel": 3, "dropout": 0.0}
        values.update(changes)
        torch.manual_seed(seed)
        model = DDUNet(ModelConfig(**values)).double().eval()
        randomize_batchnorm(model, seed)
        return model

    return make


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so eval mode is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                dtype = module.weight.dtype
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator, dtype=dtype))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator, dtype=dtype))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator, dtype=dtype))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator, dtype=dtype))


@pytest.fixture
def write_image_pairs():
    """``write_image_pairs(root, kind)``: a tiny image/mask dataset, kind "folder" (PNG + TIFF) or "zarr"."""

    def write(root, kind: str, count: int = 3, shape=(40, 48)) -> None:
        rng = np.random.default_rng(0)
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for i in range(count):
            image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            mask = (image[..., 0] > 128).astype(np.uint8) + (image[..., 1] > 200)
            if kind == "zarr":
                import zarr

                zarr.save_array(str(root / "images" / f"im{i}.zarr"), np.moveaxis(image, -1, 0))  # (C, H, W)
                zarr.save_array(str(root / "masks" / f"im{i}.zarr"), mask)
            elif i % 2:
                import tifffile

                tifffile.imwrite(root / "images" / f"im{i}.tif", image)
                tifffile.imwrite(root / "masks" / f"im{i}.tif", mask)
            else:
                from PIL import Image

                Image.fromarray(image).save(root / "images" / f"im{i}.png")
                Image.fromarray(mask).save(root / "masks" / f"im{i}.png")

    return write
