"""Exact tiling of the plain U-Net (paper 004): identical to the monolithic pass at the radius, not below."""

from __future__ import annotations

import pytest
import torch

from napari_ddunet import ModelConfig
from napari_ddunet.core.analysis.receptive_field import eq1_radius
from napari_ddunet.core.analysis.tiling import TilingError, tiled_unet_forward, unet_halo


@pytest.mark.parametrize(("depth", "halo"), [(2, 24), (3, 48)])
def test_unet_halo(depth, halo):
    assert unet_halo(ModelConfig(depth=depth, comm_features=0)) == halo


def test_paper_004_table_1_effect(make_model):
    """Errors for every halo below the radius, none at it or beyond (004, Table 1)."""
    model = make_model(depth=2, comm_features=0)
    torch.manual_seed(1)
    image = torch.rand(1, 1, 64, 56, dtype=torch.float64)
    with torch.no_grad():
        reference = model(image)
        radius = unet_halo(model.config)
        errors = {}
        for halo in range(0, radius + 9, 4):
            tiled = tiled_unet_forward(model, image, tile_size=2 * halo + 24, halo=halo)
            errors[halo] = (tiled - reference).abs().max().item()
    for halo, error in errors.items():
        if halo < radius:
            assert error > 1e-6, (halo, error)
        else:
            assert error < 1e-10, (halo, error)


def test_eq1_rounded_is_not_enough_at_depth_2(make_model):
    """004's rounded Eq. 1 radius (20 at depth 2) misses pooling context; the exact halo (24) does not."""
    model = make_model(depth=2, comm_features=0)
    image = torch.rand(1, 1, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert eq1_radius(model.config) == 20
    with torch.no_grad():
        error = (tiled_unet_forward(model, image, 56, halo=20) - model(image)).abs().max().item()
    assert error > 1e-6


def test_default_halo_non_square_tiles_batch_and_channels(make_model):
    model = make_model(depth=3, comm_features=0, in_channels=2, num_classes=4)
    image = torch.rand(2, 2, 96, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tiled = tiled_unet_forward(model, image, tile_size=(128, 120))
        assert torch.allclose(tiled, model(image), rtol=0, atol=1e-10)


def test_rejects_what_cannot_be_exact(make_model):
    image = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    with pytest.raises(TilingError, match="plain U-Net only"):
        tiled_unet_forward(make_model(comm_features=4), image, 64)
    with pytest.raises(TilingError, match="plain U-Net only"):
        tiled_unet_forward(make_model(comm_features=4, communicate=False), image, 64)
    plain = make_model(comm_features=0)
    with pytest.raises(TilingError, match="multiple of 4"):
        tiled_unet_forward(plain, image, 64, halo=6)
    with pytest.raises(TilingError, match="larger than twice the halo"):
        tiled_unet_forward(plain, image, 48)
    with pytest.raises(TilingError, match="multiples of 4"):
        tiled_unet_forward(plain, image[..., :30], 64)
